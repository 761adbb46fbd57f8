//! One-line error texts: an error followed by its causes. Clients such as reqwest keep the
//! useful part ("connection refused", "certificate unknown") in the source chain under a
//! general top line, so every place that reports such an error goes through here.

use std::error::Error;

/// Every cause under `e`, each prefixed with `": "` (empty when it has none).
pub(crate) fn causes(e: &dyn Error) -> String {
    let mut text = String::new();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `e` and its causes on one line.
pub(crate) fn full(e: &dyn Error) -> String {
    format!("{e}{}", causes(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn causes_follow_the_error_on_one_line() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(full(&e), "outer: inner");
        assert_eq!(causes(&e), ": inner");
        assert_eq!(causes(&std::io::Error::other("alone")), "");
    }
}
