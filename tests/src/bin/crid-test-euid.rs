//! Prints its effective uid. The no_new_privs test runs it setuid-root inside a container:
//! without no_new_privs it prints 0, with it the caller's uid.

fn main() {
    println!("{}", nix::unistd::geteuid());
}
