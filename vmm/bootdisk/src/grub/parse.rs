//! Statements into a tree: `if`/`elif`/`else`/`fi`, `menuentry`/`submenu` blocks,
//! and the constructs that are parsed only to be skipped (`function`, loops).
//! Nesting is bounded.

use super::ast::{Node, Stmt, Word};

/// Deepest nesting of blocks and conditionals.
pub const MAX_DEPTH: usize = 16;

pub fn parse(stmts: &[Stmt]) -> Result<Vec<Node>, String> {
    let mut parser = Parser {
        stmts,
        pos: 0,
        stash: None,
    };
    let (nodes, end) = parser.list(&[], 0)?;
    match end {
        None => Ok(nodes),
        Some(end) => Err(format!(
            "line {}: '{end}' without its opening",
            parser.line()
        )),
    }
}

struct Parser<'a> {
    stmts: &'a [Stmt],
    pos: usize,
    /// The rest of a statement whose leading keyword was consumed (`then cmd`).
    stash: Option<Current>,
}

struct Current {
    words: Vec<Word>,
    opens_block: bool,
    closes_block: bool,
    line: usize,
}

impl Parser<'_> {
    fn line(&self) -> usize {
        self.stmts
            .get(self.pos.saturating_sub(1))
            .map_or(0, |s| s.line)
    }

    fn next(&mut self) -> Option<Current> {
        if let Some(cur) = self.stash.take() {
            return Some(cur);
        }
        let s = self.stmts.get(self.pos)?;
        self.pos += 1;
        Some(Current {
            words: s.words.clone(),
            opens_block: s.opens_block,
            closes_block: s.closes_block,
            line: s.line,
        })
    }

    /// Keeps what follows a statement's keyword for the next read.
    fn push_back_rest(&mut self, cur: &Current) {
        let words = cur.words.get(1..).unwrap_or_default().to_vec();
        if !words.is_empty() || cur.opens_block {
            self.stash = Some(Current {
                words,
                opens_block: cur.opens_block,
                closes_block: false,
                line: cur.line,
            });
        }
    }

    /// Parses statements until one that starts with a keyword of `ends` (its
    /// rest kept for the next read) or a `}` when `ends` has "}"; returns the
    /// end found, or None at the end of the input.
    fn list(&mut self, ends: &[&str], depth: usize) -> Result<(Vec<Node>, Option<String>), String> {
        if depth > MAX_DEPTH {
            return Err(format!(
                "line {}: blocks nest deeper than {MAX_DEPTH}",
                self.line()
            ));
        }
        let mut nodes = Vec::new();
        while let Some(cur) = self.next() {
            if cur.closes_block {
                if ends.contains(&"}") {
                    return Ok((nodes, Some("}".into())));
                }
                return Err(format!("line {}: '}}' without its opening", cur.line));
            }
            let first = cur
                .words
                .first()
                .and_then(|w| w.keyword())
                .unwrap_or("")
                .to_string();
            if !first.is_empty() && first != "}" && ends.contains(&first.as_str()) {
                self.push_back_rest(&cur);
                return Ok((nodes, Some(first)));
            }
            match first.as_str() {
                "then" | "elif" | "else" | "fi" | "do" | "done" => {
                    return Err(format!("line {}: '{first}' out of place", cur.line));
                }
                "if" => {
                    self.push_back_rest(&cur);
                    nodes.push(self.if_block(cur.line, depth)?);
                }
                "menuentry" | "submenu" if cur.opens_block => {
                    let body = self.block(&first, cur.line, depth)?;
                    nodes.push(Node::Menu {
                        submenu: first == "submenu",
                        args: cur.words[1..].to_vec(),
                        body,
                        line: cur.line,
                    });
                }
                "for" | "while" | "until" => {
                    // The condition runs up to `do`, the body up to `done`.
                    self.expect(&first, "do", cur.line, depth)?;
                    self.expect(&first, "done", cur.line, depth)?;
                    nodes.push(Node::Skipped);
                }
                _ if cur.opens_block => {
                    // `function NAME {` or a block GRUB may know and form-vmm does not:
                    // parsed through, never run.
                    self.block(&first, cur.line, depth)?;
                    nodes.push(Node::Skipped);
                }
                _ if !cur.words.is_empty() => nodes.push(Node::Cmd {
                    words: cur.words,
                    line: cur.line,
                }),
                _ => {}
            }
        }
        Ok((nodes, None))
    }

    fn block(&mut self, what: &str, line: usize, depth: usize) -> Result<Vec<Node>, String> {
        let (body, end) = self.list(&["}"], depth + 1)?;
        if end.is_none() {
            return Err(format!("line {line}: {what} block without its '}}'"));
        }
        Ok(body)
    }

    fn expect(
        &mut self,
        what: &str,
        end: &str,
        line: usize,
        depth: usize,
    ) -> Result<Vec<Node>, String> {
        let (nodes, found) = self.list(&[end], depth + 1)?;
        if found.as_deref() != Some(end) {
            return Err(format!("line {line}: '{what}' without '{end}'"));
        }
        Ok(nodes)
    }

    fn if_block(&mut self, line: usize, depth: usize) -> Result<Node, String> {
        let mut branches = Vec::new();
        loop {
            let cond = self.expect("if", "then", line, depth)?;
            let (body, end) = self.list(&["elif", "else", "fi"], depth + 1)?;
            branches.push((cond, body));
            match end.as_deref() {
                Some("elif") => continue,
                Some("else") => {
                    let otherwise = self.expect("if", "fi", line, depth)?;
                    return Ok(Node::If {
                        branches,
                        otherwise,
                    });
                }
                Some("fi") => {
                    return Ok(Node::If {
                        branches,
                        otherwise: Vec::new(),
                    })
                }
                _ => return Err(format!("line {line}: 'if' without 'fi'")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::lex::statements;
    use super::*;

    fn tree(text: &str) -> Result<Vec<Node>, String> {
        parse(&statements(text)?)
    }

    #[test]
    fn if_elif_else_and_menus() {
        let nodes = tree(
            "if [ a ]; then set x=1\nelif [ b ]; then\n set x=2\nelse set x=3; fi\n\
             submenu 'Adv' {\n menuentry 'k' --class x {\n  linux /k\n }\n}\n\
             function f {\n echo\n}\nfor i in 1 2; do echo $i; done",
        )
        .unwrap();
        assert_eq!(nodes.len(), 4, "{nodes:#?}");
        match &nodes[0] {
            Node::If {
                branches,
                otherwise,
            } => {
                assert_eq!(branches.len(), 2);
                assert_eq!(branches[0].1.len(), 1);
                assert_eq!(otherwise.len(), 1);
            }
            n => panic!("{n:?}"),
        }
        match &nodes[1] {
            Node::Menu { submenu, body, .. } => {
                assert!(submenu);
                assert!(matches!(&body[0], Node::Menu { submenu: false, .. }));
            }
            n => panic!("{n:?}"),
        }
        assert_eq!(nodes[2], Node::Skipped);
        assert_eq!(nodes[3], Node::Skipped);
    }

    #[test]
    fn unbalanced_input_is_an_error_not_a_panic() {
        for bad in [
            "if [ a ]; then",
            "fi",
            "}",
            "menuentry 'x' {",
            "if a; else b; fi",
            "for x; done",
            "while x; do y",
        ] {
            assert!(tree(bad).is_err(), "{bad}");
        }
        let deep = "if a; then ".repeat(40) + &"fi; ".repeat(40);
        assert!(tree(&deep).unwrap_err().contains("nest deeper"));
    }
}
