//! Running critest against crid's socket: the runner's skip list, streaming critest's output
//! as it comes, and reading ginkgo's closing summary.

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

use anyhow::Context;

/// The specs this runner skips, with why: its only skips, printed at the start. An entry
/// names a spec crid cannot pass yet for a known reason (`("[k8s.io] Streaming … attach
/// [Conformance]", "streaming: issue 12")`, as the 5 streaming specs had until Exec, Attach
/// and PortForward stopped answering UNIMPLEMENTED), and goes when its reason does.
pub const SKIPS: &[(&str, &str)] = &[];

/// ginkgo's closing counts (`SUCCESS! -- 87 Passed | 0 Failed | 0 Pending | 26 Skipped`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub passed: u32,
    pub failed: u32,
    pub pending: u32,
    pub skipped: u32,
    /// ginkgo called the suite a success.
    pub success: bool,
}

/// The counts of ginkgo's summary line, if `line` is one.
pub fn parse_summary(line: &str) -> Option<Summary> {
    let (verdict, counts) = line.trim().split_once(" -- ")?;
    let mut summary = Summary {
        success: match verdict.trim() {
            "SUCCESS!" => true,
            "FAIL!" => false,
            _ => return None,
        },
        ..Summary::default()
    };
    for part in counts.split('|') {
        let mut words = part.split_whitespace();
        let n: u32 = words.next()?.parse().ok()?;
        match words.next()? {
            "Passed" => summary.passed = n,
            "Failed" => summary.failed = n,
            "Pending" => summary.pending = n,
            "Skipped" => summary.skipped = n,
            _ => return None,
        }
    }
    Some(summary)
}

/// The `-ginkgo.skip` flags of [`SKIPS`]: each spec's whole text, literally (RE2 `\Q…\E`).
pub fn skip_flags() -> Vec<String> {
    SKIPS
        .iter()
        .map(|(spec, _)| format!("-ginkgo.skip=\\Q{spec}\\E"))
        .collect()
}

/// The suite's time limit unless the caller gives one (ginkgo's default is an hour): a hung
/// spec then ends the run with a report instead of eating the CI budget.
const TIMEOUT_FLAG: &str = "-ginkgo.timeout=20m";

/// Runs `critest` on `socket` with `CRITEST_DIGEST_IMAGE=digest_image`, the runner's flags,
/// then `extra` (a later flag wins); passes its output through line by line and returns its exit status and the
/// summary it closed with (none when it died before one).
pub fn run(
    critest: &Path,
    socket: &Path,
    digest_image: &str,
    extra: &[String],
) -> anyhow::Result<(ExitStatus, Option<Summary>)> {
    let endpoint = format!("unix://{}", socket.display());
    let mut child = Command::new(critest)
        .args(["-runtime-endpoint", &endpoint, "-image-endpoint", &endpoint])
        .args(["-ginkgo.no-color", "-ginkgo.v", TIMEOUT_FLAG])
        .args(skip_flags())
        .args(extra)
        .env("CRITEST_DIGEST_IMAGE", digest_image)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {}", critest.display()))?;
    let stdout = child.stdout.take().context("critest's stdout")?;
    let mut reader = std::io::BufReader::new(stdout);
    let mut summary = None;
    let mut line = Vec::new();
    let mut out = std::io::stdout();
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .context("read critest's output")?;
        if n == 0 {
            break;
        }
        // Best effort: a closed stdout must not stop critest half-way.
        let _ = out.write_all(&line).and_then(|()| out.flush());
        if let Some(found) = parse_summary(&String::from_utf8_lossy(&line)) {
            summary = Some(found);
        }
    }
    let status = child.wait().context("wait for critest")?;
    Ok((status, summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lines() {
        assert_eq!(
            parse_summary("SUCCESS! -- 87 Passed | 0 Failed | 0 Pending | 26 Skipped"),
            Some(Summary {
                passed: 87,
                failed: 0,
                pending: 0,
                skipped: 26,
                success: true
            })
        );
        assert_eq!(
            parse_summary("FAIL! -- 80 Passed | 7 Failed | 1 Pending | 25 Skipped\n"),
            Some(Summary {
                passed: 80,
                failed: 7,
                pending: 1,
                skipped: 25,
                success: false
            })
        );
        assert_eq!(parse_summary("Ran 87 of 113 Specs in 200.1 seconds"), None);
        assert_eq!(parse_summary("  STEP: create -- 3 Passed | x"), None);
    }

    #[test]
    fn every_skip_has_a_reason_and_a_whole_spec_name() {
        for (spec, reason) in SKIPS {
            assert!(spec.starts_with("[k8s.io] "), "{spec}");
            assert!(!reason.is_empty(), "{spec}");
            assert!(!spec.contains("\\E"), "{spec}");
        }
        assert_eq!(skip_flags().len(), SKIPS.len());
    }
}
