//! Text logs that a client cannot forge lines in. Usernames, REST user ids and other
//! strings a client sends reach log fields; in the text format a CR or LF inside one
//! would end the line and start a forged one (with a timestamp of the attacker's
//! choosing), which log readers such as fail2ban would believe. Each formatted event
//! is written in one piece, so escaping every control character but the final newline
//! keeps one event on one line. (The JSON format escapes them itself.)

use std::io::{self, Write};
use tracing_subscriber::fmt::MakeWriter;

/// Stderr, with control characters in each event escaped as `\xNN`.
#[derive(Debug, Clone, Copy, Default)]
pub struct EscapedStderr;

impl<'a> MakeWriter<'a> for EscapedStderr {
    type Writer = Escaping<io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        Escaping(io::stderr())
    }
}

/// A writer that escapes control characters, except one trailing newline.
#[derive(Debug)]
pub struct Escaping<W>(pub W);

impl<W: Write> Write for Escaping<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (body, newline) = match buf.strip_suffix(b"\n") {
            Some(body) => (body, true),
            None => (buf, false),
        };
        let mut out = Vec::with_capacity(buf.len() + 16);
        escape_into(body, &mut out);
        if newline {
            out.push(b'\n');
        }
        self.0.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// C0 controls but tab, DEL, and the C1 controls (U+0080 to U+009F, which some
/// terminals and viewers also act on) become `\xNN` / `\u{NN}`.
fn escape_into(text: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while let Some(&b) = text.get(i) {
        if (b < 0x20 && b != b'\t') || b == 0x7f {
            let _ = write!(out, "\\x{b:02x}");
        } else if b == 0xc2 && text.get(i + 1).is_some_and(|n| (0x80..=0x9f).contains(n)) {
            let _ = write!(out, "\\u{{{:02x}}}", text.get(i + 1).copied().unwrap_or(0));
            i += 1;
        } else {
            out.push(b);
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(line: &str) -> String {
        let mut w = Escaping(Vec::new());
        w.write_all(line.as_bytes()).unwrap();
        String::from_utf8(w.0).unwrap()
    }

    #[test]
    fn a_forged_line_stays_inside_its_field() {
        let forged = "INFO allocation ended user=1700000000:bob\n2026-12-06T00:00:00Z WARN authentication failed client=203.0.113.9\n";
        assert_eq!(
            escaped(forged),
            "INFO allocation ended user=1700000000:bob\\x0a2026-12-06T00:00:00Z WARN authentication failed client=203.0.113.9\n"
        );
        assert_eq!(escaped("a\rb\u{1b}[31mc\u{85}d\te\n"), "a\\x0db\\x1b[31mc\\u{85}d\te\n");
        assert_eq!(escaped("plain é ü\n"), "plain é ü\n");
    }
}
