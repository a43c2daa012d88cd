//! Guest and program output made safe to print on a terminal or in a
//! report: control characters in caret notation, bytes that are not UTF-8
//! as `\xNN`, and a log's last lines read without reading the whole log.

use std::path::Path;

/// What [`tail`] reads of a log at most.
const TAIL_READ_MAX: u64 = 64 << 10;

/// The last `n` lines of a log file, made safe and readable to print:
/// control characters but tab in caret notation (`^M` for a carriage
/// return, `^[` for escape), bytes that are not UTF-8 as `\xNN`, so a
/// guest's escape sequences cannot garble the console and nothing turns
/// into U+FFFD.
pub fn tail(log: &Path, n: usize) -> Vec<String> {
    // Lines of a guest's console are short; a log can be huge.
    let Ok(bytes) = crate::schedule::logcap::read_tail(log, TAIL_READ_MAX) else {
        return Vec::new();
    };
    let lines: Vec<&[u8]> = bytes
        .strip_suffix(b"\n")
        .unwrap_or(&bytes)
        .split(|&b| b == b'\n')
        .collect();
    if bytes.is_empty() {
        return Vec::new();
    }
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| visible(l.strip_suffix(b"\r").unwrap_or(l)))
        .collect()
}

/// `bytes` as text, each byte that is not UTF-8 written `\xNN` (rather
/// than U+FFFD, which hides what the program printed).
pub fn escape_invalid(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// `bytes` as printable text (see [`tail`]).
pub fn visible(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\t' => out.push(c),
                '\x7f' => out.push_str("^?"),
                c if (c as u32) < 0x20 => {
                    out.push('^');
                    out.push(char::from(b'@' + c as u8));
                }
                c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_are_safe_to_print() {
        let path = std::env::temp_dir().join(format!("ktvmm-tail-{}", std::process::id()));
        std::fs::write(&path, b"a\nb\x1b[2Jc\n\xff\n50%\r100%\r\nd\x7f\xc2\x85\n").unwrap();
        let lines = tail(&path, 4);
        assert_eq!(lines, ["b^[[2Jc", "\\xff", "50%^M100%", "d^?\\u{85}"]);
        assert!(lines.iter().all(|l| !l.contains('\u{fffd}')));
        assert!(tail(Path::new("/nonexistent"), 3).is_empty());
        let _ = std::fs::remove_file(path);
    }
}
