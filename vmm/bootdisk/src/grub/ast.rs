//! The shapes shared by the GRUB script's lexer, parser and evaluator.

/// A piece of a word: literal text, or a variable to expand. `quoted` parts are
/// not split on whitespace and keep an otherwise empty word alive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    Lit { text: String, quoted: bool },
    Var { name: String, quoted: bool },
}

/// One word of a command, before expansion.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Word {
    pub parts: Vec<Part>,
}

impl Word {
    /// The word's text when it is a plain, unquoted literal: how keywords
    /// (`if`, `then`, `{`, ...) are recognised.
    pub fn keyword(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [Part::Lit {
                text,
                quoted: false,
            }] => Some(text),
            _ => None,
        }
    }
}

/// A command's words up to a `;`, a newline, a `{` or a `}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stmt {
    pub words: Vec<Word>,
    /// Ended by a `{`: the words head a block (menuentry, submenu, function).
    pub opens_block: bool,
    /// A `}`: it ends the innermost block (and has no words).
    pub closes_block: bool,
    pub line: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Cmd {
        words: Vec<Word>,
        line: usize,
    },
    If {
        /// (condition, body) for `if` and each `elif`.
        branches: Vec<(Vec<Node>, Vec<Node>)>,
        otherwise: Vec<Node>,
    },
    /// `menuentry` (submenu false) or `submenu`: the head's words (title and
    /// options) and the body.
    Menu {
        submenu: bool,
        args: Vec<Word>,
        body: Vec<Node>,
        line: usize,
    },
    /// `function`, `for`, `while`, `until`: parsed so that their ends are found,
    /// never run (cloud images' boot choice never depends on them).
    Skipped,
}
