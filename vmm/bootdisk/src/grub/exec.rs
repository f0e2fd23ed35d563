//! Runs the parsed script the way GRUB would at boot, as far as the choice of
//! entry needs: variables (`set`, `name=value`, `unset`, `load_env`), conditions
//! (`[`/`test`, `true`, `false`, `!`), `menuentry`, `submenu` and `blscfg`.
//! Everything else (insmod, search, load_video, ...) is a no-op that fails
//! inside a condition. No loops or functions run, so the work is bounded by the
//! script's size; entries and variables are counted too.

use super::ast::{Node, Part, Word};
use std::collections::HashMap;

/// Most menu entries and submenus, all levels together.
pub const MAX_ITEMS: usize = 1024;
/// Most variables, and the longest value (and expanded word).
const MAX_VARS: usize = 1024;
const MAX_VALUE: usize = 64 * 1024;

pub type Vars = HashMap<String, String>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    Entry {
        title: String,
        id: Option<String>,
        body: Vec<Node>,
    },
    Submenu {
        title: String,
        id: Option<String>,
        items: Vec<Item>,
    },
    /// Where `blscfg` put the Boot Loader Specification entries.
    Bls,
}

/// What a menu entry's body asks GRUB to load.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Load {
    /// The kernel path and its arguments (`linux`, `linux16`, `linuxefi`).
    pub linux: Option<(String, Vec<String>)>,
    /// `initrd` paths, in order (several are concatenated).
    pub initrd: Vec<String>,
    /// A loader form-vmm cannot follow (`chainloader`, `multiboot`, ...).
    pub unsupported: Option<String>,
}

pub struct Machine<'a> {
    pub vars: Vars,
    /// grubenv's variables, for `load_env`.
    pub grubenv: &'a Vars,
    /// Whether a path (as `[ -e/-f/-s ]` sees it) exists.
    pub exists: &'a dyn Fn(&str) -> bool,
    items: usize,
}

impl<'a> Machine<'a> {
    pub fn new(vars: Vars, grubenv: &'a Vars, exists: &'a dyn Fn(&str) -> bool) -> Self {
        Machine {
            vars,
            grubenv,
            exists,
            items: 0,
        }
    }

    /// Runs a list at the menu's level: returns its entries.
    pub fn run_menu(&mut self, nodes: &[Node]) -> Result<Vec<Item>, String> {
        let mut items = Vec::new();
        self.run(nodes, &mut Sink::Menu(&mut items))?;
        Ok(items)
    }

    /// Runs a menu entry's body: what it loads.
    pub fn run_entry(&mut self, nodes: &[Node]) -> Result<Load, String> {
        let mut load = Load::default();
        self.run(nodes, &mut Sink::Entry(&mut load))?;
        Ok(load)
    }

    fn run(&mut self, nodes: &[Node], sink: &mut Sink<'_>) -> Result<bool, String> {
        let mut status = true;
        for node in nodes {
            status = match node {
                Node::Cmd { words, line } => self
                    .command(words, sink)
                    .map_err(|e| format!("line {line}: {e}"))?,
                Node::If {
                    branches,
                    otherwise,
                } => {
                    let mut taken = None;
                    for (cond, body) in branches {
                        if self.run(cond, &mut Sink::Nothing)? {
                            taken = Some(body);
                            break;
                        }
                    }
                    self.run(taken.unwrap_or(otherwise), sink)?;
                    true
                }
                Node::Menu {
                    submenu,
                    args,
                    body,
                    line,
                } => {
                    self.items += 1;
                    if self.items > MAX_ITEMS {
                        return Err(format!("line {line}: more than {MAX_ITEMS} menu entries"));
                    }
                    let (title, id) = self
                        .menu_head(args)
                        .map_err(|e| format!("line {line}: {e}"))?;
                    if let Sink::Menu(items) = sink {
                        if *submenu {
                            let saved = self.vars.clone();
                            let inner = self.run_menu(body)?;
                            self.vars = saved;
                            items.push(Item::Submenu {
                                title,
                                id,
                                items: inner,
                            });
                        } else {
                            items.push(Item::Entry {
                                title,
                                id,
                                body: body.clone(),
                            });
                        }
                    }
                    true
                }
                Node::Skipped => true,
            };
        }
        Ok(status)
    }

    /// A menuentry's title (the first argument that is not an option) and id.
    fn menu_head(&self, args: &[Word]) -> Result<(String, Option<String>), String> {
        let mut words = Vec::new();
        for w in args {
            words.extend(self.expand(w)?);
        }
        let mut title = None;
        let mut id = None;
        let mut it = words.into_iter();
        while let Some(w) = it.next() {
            if let Some(opt) = w.strip_prefix("--") {
                let (name, value) = match opt.split_once('=') {
                    Some((n, v)) => (n.to_string(), Some(v.to_string())),
                    None => (opt.to_string(), None),
                };
                let takes_value = matches!(
                    name.as_str(),
                    "class" | "users" | "hotkey" | "id" | "source"
                );
                let value = if takes_value {
                    value.or_else(|| it.next())
                } else {
                    value
                };
                if name == "id" {
                    id = value;
                }
            } else if title.is_none() {
                title = Some(w);
            }
        }
        Ok((title.unwrap_or_default(), id))
    }

    fn var(&self, name: &str) -> String {
        match name {
            "?" => "0".into(),
            _ => self.vars.get(name).cloned().unwrap_or_default(),
        }
    }

    fn set(&mut self, name: &str, value: String) -> Result<(), String> {
        if value.len() > MAX_VALUE {
            return Err(format!("variable {name} is longer than 64 KiB"));
        }
        if !self.vars.contains_key(name) && self.vars.len() >= MAX_VARS {
            return Err(format!("more than {MAX_VARS} variables"));
        }
        self.vars.insert(name.to_string(), value);
        Ok(())
    }

    /// A word's fields after variable expansion: unquoted variables split on
    /// whitespace, and an unquoted expansion to nothing is no field.
    pub fn expand(&self, word: &Word) -> Result<Vec<String>, String> {
        let mut fields = Vec::new();
        let mut cur = String::new();
        let mut has = false;
        let mut total = 0usize;
        for part in &word.parts {
            let (text, quoted) = match part {
                Part::Lit { text, quoted } => (text.clone(), *quoted),
                Part::Var { name, quoted } => (self.var(name), *quoted),
            };
            total += text.len();
            if total > MAX_VALUE {
                return Err("a word expands to more than 64 KiB".into());
            }
            let is_var = matches!(part, Part::Var { .. });
            if quoted || !is_var {
                cur.push_str(&text);
                has |= quoted || !text.is_empty();
                continue;
            }
            let pieces: Vec<&str> = text.split_ascii_whitespace().collect();
            let lead = text.starts_with(|c: char| c.is_ascii_whitespace());
            let trail = text.ends_with(|c: char| c.is_ascii_whitespace());
            if (lead || pieces.is_empty() && !text.is_empty()) && has {
                fields.push(std::mem::take(&mut cur));
                has = false;
            }
            for (i, piece) in pieces.iter().enumerate() {
                if i > 0 {
                    fields.push(std::mem::take(&mut cur));
                }
                cur.push_str(piece);
                has = true;
            }
            if trail && has {
                fields.push(std::mem::take(&mut cur));
                has = false;
            }
        }
        if has {
            fields.push(cur);
        }
        Ok(fields)
    }

    fn command(&mut self, words: &[Word], sink: &mut Sink<'_>) -> Result<bool, String> {
        let mut args = Vec::new();
        for w in words {
            args.extend(self.expand(w)?);
        }
        // `! CMD` negates; several cancel out.
        let bangs = args.iter().take_while(|a| *a == "!").count();
        if bangs > 0 {
            let status = self.builtin(&args[bangs..], sink)?;
            return Ok(status ^ (bangs % 2 == 1));
        }
        self.builtin(&args, sink)
    }

    fn builtin(&mut self, args: &[String], sink: &mut Sink<'_>) -> Result<bool, String> {
        let Some((name, rest)) = args.split_first() else {
            return Ok(true);
        };
        match name.as_str() {
            "set" => {
                if let Some((var, value)) = rest.first().and_then(|a| a.split_once('=')) {
                    if is_name(var) {
                        self.set(var, value.to_string())?;
                    }
                }
                Ok(true)
            }
            "unset" => {
                for var in rest {
                    self.vars.remove(var);
                }
                Ok(true)
            }
            "load_env" => {
                self.load_env(rest)?;
                Ok(true)
            }
            "true" => Ok(true),
            "false" => Ok(false),
            "[" => Ok(match rest.split_last() {
                Some((last, expr)) if last == "]" => self.test(expr),
                _ => false,
            }),
            "test" => Ok(self.test(rest)),
            "blscfg" => {
                if let Sink::Menu(items) = sink {
                    items.push(Item::Bls);
                }
                Ok(true)
            }
            "linux" | "linux16" | "linuxefi" => {
                if let Sink::Entry(load) = sink {
                    match rest.split_first() {
                        Some((kernel, args)) => {
                            load.linux = Some((kernel.clone(), args.to_vec()));
                        }
                        None => return Err(format!("{name} names no kernel")),
                    }
                }
                Ok(true)
            }
            "initrd" | "initrd16" | "initrdefi" => {
                if let Sink::Entry(load) = sink {
                    load.initrd = rest.to_vec();
                }
                Ok(true)
            }
            "chainloader" | "multiboot" | "multiboot2" | "kfreebsd" | "knetbsd" | "kopenbsd"
            | "appleloader" | "xnu_kernel" | "xnu_kernel64" => {
                if let Sink::Entry(load) = sink {
                    load.unsupported = Some(name.clone());
                }
                Ok(true)
            }
            _ => {
                if rest.is_empty() {
                    if let Some((var, value)) = name.split_once('=') {
                        if is_name(var) {
                            self.set(var, value.to_string())?;
                            return Ok(true);
                        }
                    }
                }
                // Anything else does nothing here, and fails as a condition.
                Ok(matches!(sink, Sink::Menu(_) | Sink::Entry(_)))
            }
        }
    }

    /// `load_env [-f FILE] [-s] [NAME...]`: grubenv's variables (those named, when
    /// any are). Another file than grubenv is not read.
    fn load_env(&mut self, args: &[String]) -> Result<(), String> {
        let mut names = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "-f" | "--file" => {
                    let file = it.next().map(String::as_str).unwrap_or("");
                    if !file.ends_with("/grubenv") {
                        return Ok(());
                    }
                }
                "-s" | "--skip-sig" => {}
                name => names.push(name.to_string()),
            }
        }
        let mut env: Vec<(&String, &String)> = self.grubenv.iter().collect();
        env.sort();
        for (k, v) in env {
            if names.is_empty() || names.contains(k) {
                self.set(k, v.clone())?;
            }
        }
        Ok(())
    }

    /// `[ EXPR ]` / `test EXPR`: the forms GRUB's scripts use, joined by `-o`
    /// and `-a` (which binds tighter). Anything else is false.
    fn test(&self, args: &[String]) -> bool {
        args.split(|a| a == "-o")
            .any(|all| all.split(|a| a == "-a").all(|one| self.primary(one)))
    }

    fn primary(&self, args: &[String]) -> bool {
        let bangs = args.iter().take_while(|a| *a == "!").count();
        let args: Vec<&str> = args[bangs..].iter().map(String::as_str).collect();
        let value = match args.as_slice() {
            [] => false,
            [s] => !s.is_empty(),
            ["-n", s] => !s.is_empty(),
            ["-z", s] => s.is_empty(),
            ["-e" | "-f" | "-s", path] => (self.exists)(path),
            [a, "=" | "==", b] => a == b,
            [a, "!=", b] => a != b,
            [a, "<", b] => a < b,
            [a, ">", b] => a > b,
            [a, op @ ("-eq" | "-ne" | "-lt" | "-le" | "-gt" | "-ge"), b] => {
                match (a.parse::<i64>(), b.parse::<i64>()) {
                    (Ok(a), Ok(b)) => match *op {
                        "-eq" => a == b,
                        "-ne" => a != b,
                        "-lt" => a < b,
                        "-le" => a <= b,
                        "-gt" => a > b,
                        _ => a >= b,
                    },
                    _ => false,
                }
            }
            _ => false,
        };
        value ^ (bangs % 2 == 1)
    }
}

/// Where a list's effects go: menu entries (at a menu's level), loader commands
/// (in an entry's body) or nowhere (a condition).
enum Sink<'s> {
    Menu(&'s mut Vec<Item>),
    Entry(&'s mut Load),
    Nothing,
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}
