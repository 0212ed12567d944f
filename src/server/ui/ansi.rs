//! One log line as HTML: the text escaped, ANSI colour and bold (SGR) sequences turned into
//! spans with classes (`c1`…`c15` foreground, `b` bold), every other escape sequence dropped.
//! Log lines are untrusted step output, so nothing of them reaches the page unescaped.

/// Appends `text` to `out`, HTML-escaped.
pub fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Other control characters (a stray ESC, BEL, backspace) show nothing.
            c if c.is_control() && c != '\t' => {}
            c => out.push(c),
        }
    }
}

#[derive(Clone, Copy, Default, PartialEq)]
struct Style {
    fg: Option<u8>,
    bold: bool,
}

impl Style {
    fn apply(&mut self, params: &str) {
        let codes: Vec<u16> = if params.is_empty() {
            vec![0]
        } else {
            params.split(';').map(|p| p.parse().unwrap_or(0)).collect()
        };
        let mut i = 0;
        while i < codes.len() {
            match codes[i] {
                0 => *self = Style::default(),
                1 => self.bold = true,
                22 => self.bold = false,
                c @ 30..=37 => self.fg = Some((c - 30) as u8),
                c @ 90..=97 => self.fg = Some((c - 90 + 8) as u8),
                39 => self.fg = None,
                // 256-colour and true-colour forms: skip their arguments.
                38 | 48 => {
                    i += match codes.get(i + 1) {
                        Some(5) => 2,
                        Some(2) => 4,
                        _ => 0,
                    };
                }
                _ => {}
            }
            i += 1;
        }
    }

    fn open(&self, out: &mut String) -> bool {
        if *self == Style::default() {
            return false;
        }
        out.push_str("<span class=\"");
        let mut first = true;
        if let Some(fg) = self.fg {
            out.push_str(&format!("c{fg}"));
            first = false;
        }
        if self.bold {
            if !first {
                out.push(' ');
            }
            out.push('b');
        }
        out.push_str("\">");
        true
    }
}

/// The line as HTML.
pub fn to_html(line: &str) -> String {
    let mut out = String::with_capacity(line.len() + 16);
    let mut style = Style::default();
    let mut open = false;
    let mut rest = line;
    while let Some(at) = rest.find('\u{1b}') {
        escape_into(&mut out, &rest[..at]);
        let seq = &rest[at + 1..];
        if let Some(csi) = seq.strip_prefix('[') {
            // Parameters, then one final byte in 0x40..=0x7e.
            let end = csi
                .char_indices()
                .find(|(_, c)| ('\u{40}'..='\u{7e}').contains(c));
            match end {
                Some((i, 'm')) => {
                    if open {
                        out.push_str("</span>");
                    }
                    style.apply(&csi[..i]);
                    open = style.open(&mut out);
                    rest = &csi[i + 1..];
                }
                Some((i, c)) => rest = &csi[i + c.len_utf8()..],
                None => rest = "",
            }
        } else {
            // A lone ESC or another kind of sequence: drop the ESC, keep the text.
            rest = seq;
        }
    }
    escape_into(&mut out, rest);
    if open {
        out.push_str("</span>");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::to_html;

    #[test]
    fn markup_in_a_line_is_text_and_colours_become_spans() {
        assert_eq!(
            to_html("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(
            to_html("\u{1b}[31merror\u{1b}[0m: <b>"),
            "<span class=\"c1\">error</span>: &lt;b&gt;"
        );
        assert_eq!(
            to_html("\u{1b}[1;92mok\u{1b}[m done"),
            "<span class=\"c10 b\">ok</span> done"
        );
        // Cursor movement and 256 colours: dropped, text kept.
        assert_eq!(to_html("a\u{1b}[2Kb\u{1b}[38;5;200mc"), "abc");
        // A cut-off sequence at the end of the line, and a bare ESC.
        assert_eq!(to_html("x\u{1b}[31"), "x");
        assert_eq!(to_html("x\u{1b}y\u{7}z"), "xyz");
        // An unclosed colour is closed at the line's end.
        assert_eq!(to_html("\u{1b}[33mwarn"), "<span class=\"c3\">warn</span>");
    }
}
