//! Generates the crimon ttrpc protocol into OUT_DIR (never into the source tree): once with
//! synchronous server and client (crimon, `crimon inspect`, tests) and once with an
//! asynchronous client (crid).

use std::path::{Path, PathBuf};

fn generate(out: &Path, proto: &str, async_client: bool) {
    std::fs::create_dir_all(out).expect("create codegen dir");
    ttrpc_codegen::Codegen::new()
        .out_dir(out)
        .inputs([proto])
        .include("protos")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize {
            async_client,
            ..Default::default()
        })
        .run()
        .expect("generate monitor.proto for ttrpc");
    // The generated files open with inner attributes, which `include!` cannot take at a
    // file's top; wrap each in a module block, where they are allowed.
    let mut wrapped = String::new();
    for module in ["monitor", "monitor_ttrpc"] {
        let text = std::fs::read_to_string(out.join(format!("{module}.rs")))
            .expect("read generated module");
        // Lints stay confined to generated code.
        wrapped.push_str(&format!(
            "#[allow(clippy::all, clippy::unwrap_used, clippy::undocumented_unsafe_blocks)]\n\
             pub mod {module} {{\n{text}\n}}\n"
        ));
    }
    std::fs::write(out.join("wrapped.rs"), wrapped).expect("write wrapped module");
}

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let proto = "protos/monitor.proto";
    println!("cargo:rerun-if-changed={proto}");
    generate(&out.join("sync"), proto, false);
    generate(&out.join("async"), proto, true);
}
