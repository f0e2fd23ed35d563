//! The guest's command line: the boot entry's arguments, `console=ttyS0` when
//! they name no console (form-vmm's serial port is COM1), then the user's.

/// Arguments that say where the console is.
fn names_console(args: &str) -> bool {
    args.split_ascii_whitespace()
        .any(|a| a.starts_with("console=") || a.starts_with("earlycon"))
}

pub fn guest_cmdline(entry_args: &str, user: Option<&str>) -> String {
    let mut out: Vec<&str> = Vec::new();
    let entry_args = entry_args.trim();
    if !entry_args.is_empty() {
        out.push(entry_args);
    }
    let user = user.map(str::trim).filter(|u| !u.is_empty());
    if !names_console(entry_args) && !user.is_some_and(names_console) {
        out.push("console=ttyS0");
    }
    out.extend(user);
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::guest_cmdline;

    #[test]
    fn console_is_added_once_and_user_args_come_last() {
        assert_eq!(
            guest_cmdline("root=UUID=x ro quiet", None),
            "root=UUID=x ro quiet console=ttyS0"
        );
        assert_eq!(
            guest_cmdline("root=UUID=x ro console=tty1 console=ttyS0", Some("single")),
            "root=UUID=x ro console=tty1 console=ttyS0 single"
        );
        assert_eq!(
            guest_cmdline("root=/dev/vda1", Some("console=hvc0")),
            "root=/dev/vda1 console=hvc0"
        );
        assert_eq!(guest_cmdline("", Some("  ")), "console=ttyS0");
    }
}
