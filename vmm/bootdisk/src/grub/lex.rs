//! GRUB script text into statements: words with their quoting and variables,
//! split at `;`, newlines, `{` and `}`; comments dropped, line continuations
//! joined. Bounded: lines, words and variable names have maximum lengths.

use super::ast::{Part, Stmt, Word};

/// Longest word (bytes), longest variable name, most words in one statement.
const MAX_WORD: usize = 64 * 1024;
const MAX_NAME: usize = 128;
const MAX_WORDS: usize = 4096;

pub fn statements(text: &str) -> Result<Vec<Stmt>, String> {
    Lexer {
        chars: text.chars().collect(),
        pos: 0,
        line: 1,
    }
    .run()
}

struct Lexer {
    chars: Vec<char>,
    pos: usize,
    line: usize,
}

fn is_separator(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n' | ';')
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

impl Lexer {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, n: usize) -> Option<char> {
        self.chars.get(self.pos + n).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn err(&self, what: &str) -> String {
        format!("line {}: {what}", self.line)
    }

    fn run(mut self) -> Result<Vec<Stmt>, String> {
        let mut out = Vec::new();
        let mut words: Vec<Word> = Vec::new();
        let mut line = self.line;
        let finish = |words: &mut Vec<Word>, out: &mut Vec<Stmt>, line: usize, opens: bool| {
            if !words.is_empty() || opens {
                out.push(Stmt {
                    words: std::mem::take(words),
                    opens_block: opens,
                    closes_block: false,
                    line,
                });
            }
        };
        while let Some(c) = self.peek() {
            match c {
                '\\' if self.peek_at(1) == Some('\n') => {
                    self.bump();
                    self.bump();
                }
                ' ' | '\t' | '\r' => {
                    self.bump();
                }
                '\n' | ';' => {
                    self.bump();
                    finish(&mut words, &mut out, line, false);
                }
                '#' => {
                    while self.peek().is_some_and(|c| c != '\n') {
                        self.bump();
                    }
                }
                '{' | '}' if self.peek_at(1).is_none_or(is_separator) => {
                    self.bump();
                    if c == '{' {
                        finish(&mut words, &mut out, line, true);
                    } else {
                        finish(&mut words, &mut out, line, false);
                        out.push(Stmt {
                            words: Vec::new(),
                            opens_block: false,
                            closes_block: true,
                            line: self.line,
                        });
                    }
                }
                _ => {
                    if words.is_empty() {
                        line = self.line;
                    }
                    if words.len() >= MAX_WORDS {
                        return Err(self.err("too many words in one command"));
                    }
                    let word = self.word()?;
                    words.push(word);
                }
            }
        }
        finish(&mut words, &mut out, line, false);
        Ok(out)
    }

    /// One word: up to an unquoted separator.
    fn word(&mut self) -> Result<Word, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut len = 0usize;
        let flush = |lit: &mut String, parts: &mut Vec<Part>, quoted: bool| {
            if !lit.is_empty() {
                parts.push(Part::Lit {
                    text: std::mem::take(lit),
                    quoted,
                });
            }
        };
        while let Some(c) = self.peek() {
            len += 1;
            if len > MAX_WORD {
                return Err(self.err("a word is longer than 64 KiB"));
            }
            match c {
                c if is_separator(c) => break,
                '\\' => {
                    self.bump();
                    match self.bump() {
                        Some('\n') | None => {}
                        Some(c) => lit.push(c),
                    }
                }
                '\'' => {
                    flush(&mut lit, &mut parts, false);
                    self.bump();
                    let mut text = String::new();
                    loop {
                        match self.bump() {
                            None => return Err(self.err("unterminated single quote")),
                            Some('\'') => break,
                            Some(c) => text.push(c),
                        }
                        len += 1;
                        if len > MAX_WORD {
                            return Err(self.err("a word is longer than 64 KiB"));
                        }
                    }
                    parts.push(Part::Lit { text, quoted: true });
                }
                '"' => {
                    flush(&mut lit, &mut parts, false);
                    self.bump();
                    loop {
                        len += 1;
                        if len > MAX_WORD {
                            return Err(self.err("a word is longer than 64 KiB"));
                        }
                        match self.peek() {
                            None => return Err(self.err("unterminated double quote")),
                            Some('"') => {
                                self.bump();
                                break;
                            }
                            Some('\\') => {
                                self.bump();
                                match self.bump() {
                                    Some(c @ ('"' | '\\' | '$')) => lit.push(c),
                                    Some('\n') => {}
                                    Some(c) => {
                                        lit.push('\\');
                                        lit.push(c);
                                    }
                                    None => return Err(self.err("unterminated double quote")),
                                }
                            }
                            Some('$') => {
                                if let Some(name) = self.variable()? {
                                    flush(&mut lit, &mut parts, true);
                                    parts.push(Part::Var { name, quoted: true });
                                } else {
                                    lit.push('$');
                                }
                            }
                            Some(c) => {
                                self.bump();
                                lit.push(c);
                            }
                        }
                    }
                    // Keep an empty "" alive as a quoted empty part.
                    parts.push(Part::Lit {
                        text: std::mem::take(&mut lit),
                        quoted: true,
                    });
                }
                '$' => {
                    if let Some(name) = self.variable()? {
                        flush(&mut lit, &mut parts, false);
                        parts.push(Part::Var {
                            name,
                            quoted: false,
                        });
                    } else {
                        lit.push('$');
                    }
                }
                c => {
                    self.bump();
                    lit.push(c);
                }
            }
        }
        flush(&mut lit, &mut parts, false);
        Ok(Word { parts })
    }

    /// At a `$`: `$name`, `${name}`, `$1`, `$?`, `$#`; consumes it and returns the
    /// name, or consumes the `$` alone and returns None when no name follows.
    fn variable(&mut self) -> Result<Option<String>, String> {
        self.bump();
        let mut name = String::new();
        match self.peek() {
            Some('{') => {
                self.bump();
                loop {
                    match self.bump() {
                        None | Some('\n') => return Err(self.err("unterminated ${")),
                        Some('}') => break,
                        Some(c) => name.push(c),
                    }
                    if name.len() > MAX_NAME {
                        return Err(self.err("a variable name is too long"));
                    }
                }
            }
            Some(c @ ('?' | '#' | '*' | '@')) => {
                self.bump();
                name.push(c);
            }
            Some(c) if is_name_char(c) => {
                while let Some(c) = self.peek().filter(|&c| is_name_char(c)) {
                    self.bump();
                    name.push(c);
                    if name.len() > MAX_NAME {
                        return Err(self.err("a variable name is too long"));
                    }
                }
            }
            _ => return Ok(None),
        }
        Ok(Some(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(s: &str, quoted: bool) -> Part {
        Part::Lit {
            text: s.into(),
            quoted,
        }
    }

    #[test]
    fn words_quotes_and_variables() {
        let stmts =
            statements("set default=\"${saved_entry}\" # comment\nlinux /vmlinuz 'a b' x$y\\\n z")
                .unwrap();
        assert_eq!(stmts.len(), 2);
        assert_eq!(stmts[0].words.len(), 2);
        assert_eq!(
            stmts[0].words[1].parts,
            vec![
                lit("default=", false),
                Part::Var {
                    name: "saved_entry".into(),
                    quoted: true
                },
                lit("", true)
            ]
        );
        assert_eq!(stmts[1].words.len(), 5);
        assert_eq!(stmts[1].words[2].parts, vec![lit("a b", true)]);
        assert_eq!(stmts[1].line, 2);
    }

    #[test]
    fn blocks() {
        let stmts = statements("menuentry 'x' {\n\tlinux /k\n}\nif [ a ]; then b; fi").unwrap();
        assert!(stmts[0].opens_block);
        assert!(stmts[2].closes_block);
        assert_eq!(stmts.len(), 6);
        // A brace inside a word is just a character.
        let stmts = statements("echo a{b} }").unwrap();
        assert_eq!(stmts[0].words[1].keyword(), Some("a{b}"));
        assert!(stmts[1].closes_block);
    }

    #[test]
    fn unterminated_quotes_are_errors() {
        assert!(statements("echo 'abc").is_err());
        assert!(statements("echo \"abc").is_err());
        assert!(statements("echo ${abc").is_err());
    }
}
