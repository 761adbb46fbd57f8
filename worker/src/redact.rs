//! Credentials in URLs (`scheme://user:password@host`) never leave the process: every log line,
//! every `check-config` report and every error printed by a command passes through [`userinfo`],
//! which replaces what stands before the `@` of a URL's authority with `***`. Operators put
//! credentials into `VAULT_ADDR`, OTLP endpoints, `LETTUCE_TELEMETRY_URL` or an S3 endpoint;
//! libraries quote those URLs in their errors. Redacting at the output boundary covers them all,
//! including the messages of errors we do not format ourselves.

use std::borrow::Cow;
use std::io::Write;

/// `text` with the userinfo of every `scheme://userinfo@host` replaced by `***`.
pub fn userinfo(text: &str) -> Cow<'_, str> {
    if !text.contains("://") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut changed = false;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // The authority ends at the path, query or fragment, or where the URL itself ends.
        let end = tail
            .find(|c: char| {
                matches!(
                    c,
                    '/' | '?' | '#' | '"' | '\'' | '<' | '>' | '`' | ')' | ']' | ','
                ) || c.is_whitespace()
            })
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&authority[at..]);
                changed = true;
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(text)
    }
}

/// A writer that redacts each write (the log formatter writes one whole event per call).
pub struct Redacting<W: Write>(pub W);

impl<W: Write> Write for Redacting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(text) => self.0.write_all(userinfo(text).as_bytes())?,
            Err(_) => self.0.write_all(buf)?,
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Standard error behind [`Redacting`]: the log layer's writer.
pub fn stderr() -> Redacting<std::io::Stderr> {
    Redacting(std::io::stderr())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_replaced_in_urls_wherever_they_stand() {
        assert_eq!(
            userinfo("vault at http://root:hunter2@vault:8200/v1/x failed"),
            "vault at http://***@vault:8200/v1/x failed"
        );
        assert_eq!(
            userinfo("(url \"https://u:p@h\") and s3://k:s@bucket?x=1"),
            "(url \"https://***@h\") and s3://***@bucket?x=1"
        );
        assert_eq!(
            userinfo("https://token@github.example"),
            "https://***@github.example"
        );
        // No userinfo, or an @ after the authority: unchanged and not copied.
        let plain = "http://host:9090/a@b and mailto:x@y";
        assert!(matches!(userinfo(plain), Cow::Borrowed(_)));
        assert_eq!(userinfo("no url here"), "no url here");
    }

    #[test]
    fn the_writer_redacts_each_write() {
        let mut w = Redacting(Vec::new());
        w.write_all(b"endpoint=http://a:b@otel:4318\n").unwrap();
        assert_eq!(
            String::from_utf8(w.0).unwrap(),
            "endpoint=http://***@otel:4318\n"
        );
    }
}
