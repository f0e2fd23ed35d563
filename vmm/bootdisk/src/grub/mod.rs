//! GRUB 2's `grub.cfg`: which entry boots by default, and what it loads.
//!
//! The script runs in a small evaluator ([`exec`]) with the variables a cloud
//! image's configuration relies on; `default` is then resolved as GRUB does: a
//! number, an id or a title, or a `>`-separated path into submenus
//! (`gnulinux-advanced-UUID>gnulinux-6.8.0-31-generic-advanced-UUID`), falling
//! back to the first entry when it names nothing.

mod ast;
mod exec;
mod lex;
mod parse;

use exec::{Item, Machine};
pub use exec::{Load, Vars};

/// The default entry of a `grub.cfg`.
#[derive(Debug, PartialEq, Eq)]
pub enum Chosen {
    /// A `menuentry`: its title and what its body loads.
    Entry { title: String, load: Load },
    /// The `blscfg` entry at this index of the BLS entries given.
    Bls(usize),
}

/// The variables GRUB has before its configuration runs (those the scripts of
/// cloud images test), with `prefix` the directory of the grub.cfg.
fn initial_vars(prefix: &str) -> Vars {
    let mut vars = Vars::new();
    for (k, v) in [
        ("prefix", prefix),
        ("config_directory", prefix),
        ("root", ""),
        ("grub_platform", "pc"),
        ("grub_cpu", "i386"),
        ("feature_menuentry_id", "y"),
        ("feature_default_font_path", "y"),
        ("feature_all_video_module", "y"),
        ("feature_timeout_style", "y"),
        ("feature_platform_search_hint", "y"),
        ("feature_200_find_part", "y"),
        ("menuentry_id_option", "--id"),
    ] {
        vars.insert(k.to_string(), v.to_string());
    }
    vars
}

/// Parses grubenv: `# GRUB Environment Block`, then `name=value` lines, padded
/// with `#`. Backslash escapes a newline or a backslash in a value.
pub fn parse_grubenv(text: &str) -> Vars {
    let mut vars = Vars::new();
    for line in text.lines().take(1024) {
        if line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.replace("\\n", "\n").replace("\\\\", "\\");
            vars.insert(k.to_string(), v);
        }
    }
    vars
}

/// A level of the menu as the user sees it: the `blscfg` marker stands for the
/// BLS entries, in their order.
enum Shown<'a> {
    Item(&'a Item),
    Bls(usize),
}

fn shown<'a>(items: &'a [Item], bls: &[(String, String)]) -> Vec<Shown<'a>> {
    let mut out = Vec::new();
    for item in items {
        match item {
            Item::Bls => out.extend((0..bls.len()).map(Shown::Bls)),
            item => out.push(Shown::Item(item)),
        }
    }
    out
}

fn matches(shown: &Shown<'_>, key: &str, bls: &[(String, String)]) -> bool {
    match shown {
        Shown::Item(Item::Entry { title, id, .. } | Item::Submenu { title, id, .. }) => {
            id.as_deref() == Some(key) || title == key
        }
        Shown::Item(Item::Bls) => false,
        Shown::Bls(i) => bls[*i].0 == key || bls[*i].1 == key,
    }
}

/// Finds the default: each `>`-separated part of `default` picks one entry of
/// a level, by number, id or title.
fn resolve<'a>(items: &'a [Item], default: &str, bls: &[(String, String)]) -> Option<Shown<'a>> {
    let mut level = items;
    let mut parts = default.split('>').peekable();
    loop {
        let part = parts.next()?.trim();
        let here = shown(level, bls);
        let pick = match part.parse::<usize>() {
            Ok(n) => here.into_iter().nth(n),
            Err(_) => here.into_iter().find(|s| matches(s, part, bls)),
        }?;
        match (pick, parts.peek()) {
            (Shown::Item(Item::Submenu { items, .. }), Some(_)) => level = items,
            (pick, None) => return Some(pick),
            _ => return None,
        }
    }
}

/// The first bootable entry at or under `shown`: a submenu opens to its first.
fn first_entry<'a>(pick: Shown<'a>, bls: &[(String, String)], depth: usize) -> Option<Shown<'a>> {
    match pick {
        Shown::Item(Item::Submenu { items, .. }) if depth < 16 => shown(items, bls)
            .into_iter()
            .find_map(|s| first_entry(s, bls, depth + 1)),
        Shown::Item(Item::Submenu { .. } | Item::Bls) => None,
        other => Some(other),
    }
}

/// Runs `text` (a grub.cfg whose directory is `prefix`) and returns its default
/// entry. `bls` lists the BLS entries (id, title) that `blscfg` would show;
/// `exists` answers `[ -f PATH ]`.
pub fn choose(
    text: &str,
    prefix: &str,
    grubenv: &Vars,
    exists: &dyn Fn(&str) -> bool,
    bls: &[(String, String)],
) -> Result<Chosen, String> {
    let stmts = lex::statements(text)?;
    let tree = parse::parse(&stmts)?;
    let mut machine = Machine::new(initial_vars(prefix), grubenv, exists);
    let items = machine.run_menu(&tree)?;
    let default = machine.vars.get("default").cloned().unwrap_or_default();
    let default = if default.is_empty() {
        "0".to_string()
    } else {
        default
    };
    let pick = match resolve(&items, &default, bls) {
        Some(pick) => pick,
        None => {
            log::info!("grub.cfg: default '{default}' names no entry; GRUB boots the first");
            shown(&items, bls)
                .into_iter()
                .next()
                .ok_or("grub.cfg has no menu entries")?
        }
    };
    match first_entry(pick, bls, 0).ok_or("grub.cfg's default submenu has no entries")? {
        Shown::Bls(i) => Ok(Chosen::Bls(i)),
        Shown::Item(Item::Entry { title, body, .. }) => {
            let load = machine.run_entry(body)?;
            Ok(Chosen::Entry {
                title: title.clone(),
                load,
            })
        }
        Shown::Item(_) => Err("grub.cfg's default is not an entry".into()),
    }
}

#[cfg(test)]
mod tests;
