//! The kernel's list format (`0-3,8,10-11`), in which sysfs gives the host's CPUs and
//! NUMA nodes: the nodes `memory.host_numa_node` names are read in it, by form-vmm
//! (checking the node) and by vmm-service (choosing it), with this one parser.

/// Parses the kernel's list format (`0-3,8,10-11`; empty for none), as sysfs
/// writes CPU and node lists.
pub fn parse_list(text: &str) -> Option<Vec<usize>> {
    let text = text.trim();
    let mut items = Vec::new();
    if text.is_empty() {
        return Some(items);
    }
    for part in text.split(',') {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?),
            None => {
                let n = part.parse::<usize>().ok()?;
                (n, n)
            }
        };
        if last < first {
            return None;
        }
        items.extend(first..=last);
    }
    items.sort_unstable();
    items.dedup();
    Some(items)
}

/// The list format again, with runs folded into ranges; for messages.
pub fn format_list(items: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < items.len() {
        let mut j = i;
        while j + 1 < items.len() && items[j + 1] == items[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            items[i].to_string()
        } else {
            format!("{}-{}", items[i], items[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_as_sysfs_writes_them() {
        assert_eq!(
            parse_list("0-3,8,10-11\n"),
            Some(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(parse_list("5"), Some(vec![5]));
        assert_eq!(parse_list("\n"), Some(vec![]));
        assert_eq!(parse_list("2,0-1"), Some(vec![0, 1, 2]));
        for bad in ["3-1", "a", "1,,2", "1-", "-1", "0-3 8"] {
            assert_eq!(parse_list(bad), None, "{bad}");
        }
        assert_eq!(format_list(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(format_list(&[]), "");
    }
}
