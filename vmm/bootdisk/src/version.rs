//! Version order for kernel file names, as `sort -V` orders them: runs of digits
//! compare as numbers, everything else byte by byte, and `~` sorts before
//! anything (a pre-release, `6.1~rc1` before `6.1`).

use std::cmp::Ordering;

pub fn compare(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (Some(b'~'), Some(b'~')) => {
                a = &a[1..];
                b = &b[1..];
            }
            (Some(b'~'), _) => return Ordering::Less,
            (_, Some(b'~')) => return Ordering::Greater,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let (na, ra) = split_digits(a);
                let (nb, rb) = split_digits(b);
                let (na, nb) = (trim_zeros(na), trim_zeros(nb));
                let order = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
                if order != Ordering::Equal {
                    return order;
                }
                a = ra;
                b = rb;
            }
            (Some(x), Some(y)) => {
                // Digits sort before other characters, as in `sort -V`.
                let order = match (x.is_ascii_digit(), y.is_ascii_digit()) {
                    (true, false) => Ordering::Less,
                    (false, true) => Ordering::Greater,
                    _ => x.cmp(y),
                };
                if order != Ordering::Equal {
                    return order;
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

fn split_digits(s: &[u8]) -> (&[u8], &[u8]) {
    let n = s.iter().take_while(|c| c.is_ascii_digit()).count();
    s.split_at(n)
}

fn trim_zeros(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&c| c == b'0').count();
    &s[n..]
}

#[cfg(test)]
mod tests {
    use super::compare;
    use std::cmp::Ordering::*;

    #[test]
    fn kernel_versions() {
        assert_eq!(compare("6.8.0-31-generic", "6.8.0-100-generic"), Less);
        assert_eq!(compare("6.10.0", "6.9.12"), Greater);
        assert_eq!(compare("5.15.0-1", "5.15.0-1"), Equal);
        assert_eq!(compare("6.1~rc1", "6.1"), Less);
        assert_eq!(
            compare("6.1.0-18-cloud-amd64", "6.1.0-9-cloud-amd64"),
            Greater
        );
        assert_eq!(compare("0-rescue-abc", "5.14.0-362.el9"), Less);
        assert_eq!(compare("007", "7"), Equal);
        let mut v = vec!["6.1.0-9", "6.1.0-10", "5.10.0-28", "6.1.0-9a"];
        v.sort_by(|a, b| compare(a, b));
        assert_eq!(v, ["5.10.0-28", "6.1.0-9", "6.1.0-9a", "6.1.0-10"]);
    }
}
