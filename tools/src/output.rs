//! How records are printed: escaped text columns, or JSON objects.

use base64::Engine as _;
use seglog::wal::Record;

/// Text for a tab-separated column: UTF-8 with `\\`, tab, CR and LF escaped; other bytes as
/// `\xNN`.
pub fn escape(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => {
            let mut out = String::with_capacity(s.len());
            for c in s.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\t' => out.push_str("\\t"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    c => out.push(c),
                }
            }
            out
        }
        Err(_) => bytes.escape_ascii().to_string(),
    }
}

/// `LSN<TAB>TIMESTAMP_US<TAB>KEY<TAB>VALUE`.
pub fn text_line(r: &Record) -> String {
    format!(
        "{}\t{}\t{}\t{}",
        r.lsn,
        r.timestamp_us,
        escape(&r.key),
        escape(&r.value)
    )
}

/// One JSON object: `lsn`, `timestamp` (µs since the Unix epoch), `kind`, and `key`/`value` as
/// text when valid UTF-8, else `key_b64`/`value_b64`.
pub fn json_line(r: &Record) -> String {
    let mut m = serde_json::Map::new();
    m.insert("lsn".into(), r.lsn.into());
    m.insert("timestamp".into(), r.timestamp_us.into());
    m.insert("kind".into(), r.kind.into());
    for (name, bytes) in [("key", &r.key), ("value", &r.value)] {
        match std::str::from_utf8(bytes) {
            Ok(s) => m.insert(name.into(), s.into()),
            Err(_) => m.insert(
                format!("{name}_b64"),
                base64::engine::general_purpose::STANDARD
                    .encode(bytes)
                    .into(),
            ),
        };
    }
    serde_json::Value::Object(m).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: &[u8], value: &[u8]) -> Record {
        Record {
            lsn: 3,
            timestamp_us: 9,
            kind: 0,
            key: key.to_vec(),
            value: value.to_vec(),
            crc: 0,
            batch_continues: false,
            location: Default::default(),
        }
    }

    #[test]
    fn text_escapes_separators_and_binary() {
        assert_eq!(text_line(&rec(b"k", b"a\tb\\c")), "3\t9\tk\ta\\tb\\\\c");
        assert_eq!(text_line(&rec(b"", &[0xff, b'a'])), "3\t9\t\t\\xffa");
    }

    #[test]
    fn json_uses_base64_only_for_binary() {
        let v: serde_json::Value = serde_json::from_str(&json_line(&rec(b"k", &[0xff]))).unwrap();
        assert_eq!(v["key"], "k");
        assert_eq!(v["value_b64"], "/w==");
        assert!(v.get("value").is_none());
    }
}
