//! Input limits: what a job may hold, and the largest delays and texts the runtime writes.
//!
//! The same numbers are enforced in Postgres (`schema/0013_limits.sql`: CHECK constraints on
//! `lettuce.job_queue` and `lettuce.job_limit_problem`, which `lettuce.enqueue` calls), so a
//! plain `INSERT` meets them too; here they give the Rust API and the CLI an error before any
//! round trip. README "Limits" documents them. Pure: no I/O.

use std::time::Duration;

use serde_json::Value;

/// Longest queue name, in characters (`[A-Za-z0-9_.:-]`).
pub const MAX_QUEUE_LEN: usize = 64;
/// Longest job kind, in characters (`[a-z0-9_.:-]`).
pub const MAX_KIND_LEN: usize = 128;
/// Largest payload, in bytes of its JSON text.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// Deepest nesting of a payload: no value more than this many levels below the top.
pub const MAX_PAYLOAD_DEPTH: usize = 64;
/// Most attempts a job may have.
pub const MAX_ATTEMPTS: i32 = 1000;
/// Longest unique key, in bytes.
pub const MAX_UNIQUE_KEY_BYTES: usize = 512;
/// Longest traceparent, in bytes (a W3C traceparent is 55).
pub const MAX_TRACEPARENT_BYTES: usize = 128;
/// Longest error text stored per attempt, in bytes; longer ones are cut with a note.
pub const MAX_ERROR_BYTES: usize = 4096;
/// Longest delay a snooze or retry backoff may ask for (30 days).
pub const MAX_DELAY: Duration = Duration::from_secs(30 * 86_400);

/// A job input outside its limit: `field` and the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {rule}")]
pub struct LimitError {
    pub field: &'static str,
    pub rule: String,
}

fn broken(field: &'static str, rule: impl Into<String>) -> Result<(), LimitError> {
    Err(LimitError {
        field,
        rule: rule.into(),
    })
}

/// True when every character of `s` is in the queue alphabet `[A-Za-z0-9_.:-]`.
pub fn is_queue_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')
}

/// `[A-Za-z0-9_.:-]{1,64}`.
pub fn check_queue(queue: &str) -> Result<(), LimitError> {
    if queue.is_empty() || queue.len() > MAX_QUEUE_LEN || !queue.chars().all(is_queue_char) {
        return broken("queue", "must match [A-Za-z0-9_.:-]{1,64}");
    }
    Ok(())
}

/// `[a-z0-9_.:-]{1,128}`.
pub fn check_kind(kind: &str) -> Result<(), LimitError> {
    let ok = |c: char| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | ':' | '-')
    };
    if kind.is_empty() || kind.len() > MAX_KIND_LEN || !kind.chars().all(ok) {
        return broken("kind", "must match [a-z0-9_.:-]{1,128}");
    }
    Ok(())
}

/// The deepest level any value of `v` sits at (the top is level 0; `[[1]]` is 2).
pub fn depth(v: &Value) -> usize {
    // Iterative, so a hostile document cannot overflow the stack here.
    let mut deepest = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, level)) = stack.pop() {
        deepest = deepest.max(level);
        match v {
            Value::Array(items) => stack.extend(items.iter().map(|i| (i, level + 1))),
            Value::Object(map) => stack.extend(map.values().map(|i| (i, level + 1))),
            _ => {}
        }
    }
    deepest
}

/// The length of `v`'s compact JSON text, counted without building it.
fn json_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    match serde_json::to_writer(&mut n, v) {
        Ok(()) => n.0,
        Err(_) => usize::MAX,
    }
}

/// Size and nesting of a payload.
pub fn check_payload(payload: &Value) -> Result<(), LimitError> {
    if depth(payload) > MAX_PAYLOAD_DEPTH {
        return broken("payload", "must nest at most 64 levels deep");
    }
    if json_len(payload) > MAX_PAYLOAD_BYTES {
        return broken("payload", "must be at most 1048576 bytes as JSON text");
    }
    Ok(())
}

/// `1..=1000`.
pub fn check_max_attempts(n: i32) -> Result<(), LimitError> {
    if !(1..=MAX_ATTEMPTS).contains(&n) {
        return broken("max_attempts", "must be between 1 and 1000");
    }
    Ok(())
}

/// Unique key and traceparent lengths.
pub fn check_lengths(
    unique_key: Option<&str>,
    traceparent: Option<&str>,
) -> Result<(), LimitError> {
    if unique_key.is_some_and(|k| k.len() > MAX_UNIQUE_KEY_BYTES) {
        return broken("unique_key", "must be at most 512 bytes");
    }
    if traceparent.is_some_and(|t| t.len() > MAX_TRACEPARENT_BYTES) {
        return broken("traceparent", "must be at most 128 bytes");
    }
    Ok(())
}

/// An error text safe to store: NUL characters (which Postgres text cannot hold) become `\0`,
/// and anything past [`MAX_ERROR_BYTES`] is cut at a character boundary with a note of the size.
pub fn sanitize_error(text: &str) -> String {
    let clean: std::borrow::Cow<str> = if text.contains('\0') {
        text.replace('\0', "\\0").into()
    } else {
        text.into()
    };
    if clean.len() <= MAX_ERROR_BYTES {
        return clean.into_owned();
    }
    let mut cut = MAX_ERROR_BYTES - 64;
    while !clean.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… (cut: {} bytes in all)", &clean[..cut], clean.len())
}

/// A delay no longer than [`MAX_DELAY`].
pub fn clamp_delay(d: Duration) -> Duration {
    d.min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_follow_their_alphabets() {
        assert!(check_queue("default").is_ok());
        assert!(check_queue("repo:index.v2-a_b").is_ok());
        assert!(check_queue(&"q".repeat(64)).is_ok());
        for bad in ["", "a b", "évil", "x\"}", &"q".repeat(65)] {
            assert_eq!(check_queue(bad).unwrap_err().field, "queue", "{bad}");
        }
        assert!(check_kind("repo.index").is_ok());
        for bad in ["", "Repo.index", "a b", &"k".repeat(129)] {
            assert_eq!(check_kind(bad).unwrap_err().field, "kind", "{bad}");
        }
    }

    #[test]
    fn depth_counts_levels_like_the_sql_check() {
        assert_eq!(depth(&json!(1)), 0);
        assert_eq!(depth(&json!([])), 0);
        assert_eq!(depth(&json!([[]])), 1);
        assert_eq!(depth(&json!([[1]])), 2);
        assert_eq!(depth(&json!({"a": {"b": 1}})), 2);
        let mut deep = json!(1);
        for _ in 0..64 {
            deep = json!([deep]);
        }
        assert!(check_payload(&deep).is_ok());
        deep = json!([deep]);
        assert_eq!(check_payload(&deep).unwrap_err().field, "payload");
    }

    #[test]
    fn payload_size_is_bounded() {
        let big = json!({ "x": "a".repeat(MAX_PAYLOAD_BYTES) });
        assert_eq!(
            check_payload(&big).unwrap_err().to_string(),
            "payload must be at most 1048576 bytes as JSON text"
        );
        assert!(check_payload(&json!({ "x": "a".repeat(1000) })).is_ok());
        assert_eq!(json_len(&json!({"a": [1, "b"]})), r#"{"a":[1,"b"]}"#.len());
    }

    #[test]
    fn error_text_loses_nul_and_is_capped_on_a_char_boundary() {
        assert_eq!(sanitize_error("a\0b"), "a\\0b");
        let long = "é".repeat(10 * 1024 * 1024 / 2);
        let s = sanitize_error(&long);
        assert!(s.len() <= MAX_ERROR_BYTES, "{}", s.len());
        assert!(
            s.ends_with("(cut: 10485760 bytes in all)"),
            "{}",
            &s[s.len() - 40..]
        );
        assert_eq!(sanitize_error("short"), "short");
    }

    #[test]
    fn delays_are_clamped() {
        assert_eq!(clamp_delay(Duration::from_millis(u64::MAX)), MAX_DELAY);
        assert_eq!(clamp_delay(Duration::from_secs(5)), Duration::from_secs(5));
    }
}
