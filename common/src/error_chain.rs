//! One error message with all its causes, for the places an error leaves the process (a
//! gRPC or ttrpc status, the start report): "failed to X: because Y: because Z".

/// `err` and its chain of sources, joined with ": ".
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn joins_causes() {
        let outer = Outer(std::io::Error::other("x"));
        assert_eq!(super::error_chain(&outer), "outer: x");
        let plain = std::io::Error::other("alone");
        assert_eq!(super::error_chain(&plain), "alone");
    }

    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("outer")
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
}
