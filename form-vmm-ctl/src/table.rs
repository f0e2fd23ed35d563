//! Aligned text tables for people: a header row, columns padded to their widest cell,
//! two spaces between columns, no trailing blanks.

pub struct Table {
    rows: Vec<Vec<String>>,
}

/// What an empty optional cell shows.
pub const NONE: &str = "-";

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Self {
            rows: vec![headers.iter().map(|h| h.to_string()).collect()],
        }
    }

    /// Adds a row; it is cut or padded to the header's column count, so a caller's
    /// miscount shows as a gap rather than a shifted table.
    pub fn row(&mut self, cells: Vec<String>) {
        let columns = self.columns();
        let mut cells = cells;
        cells.resize(columns, String::new());
        self.rows.push(cells);
    }

    /// Whether the table has no rows besides its header.
    pub fn is_empty(&self) -> bool {
        self.rows.len() <= 1
    }

    fn columns(&self) -> usize {
        self.rows.first().map_or(0, Vec::len)
    }

    pub fn render(&self) -> String {
        let mut widths = vec![0usize; self.columns()];
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (index, (cell, width)) in row.iter().zip(&widths).enumerate() {
                if index > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                let pad = width.saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// An optional value, or [`NONE`].
pub fn or_none<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| NONE.to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns_to_the_widest_cell() {
        let mut table = Table::new(&["NAME", "STATE"]);
        table.row(vec!["a-long-name".into(), "running".into()]);
        table.row(vec!["b".into(), "stopped".into()]);
        assert_eq!(
            table.render(),
            "NAME         STATE\n\
             a-long-name  running\n\
             b            stopped\n"
        );
    }

    #[test]
    fn counts_characters_not_bytes_and_trims_trailing_blanks() {
        let mut table = Table::new(&["A", "B"]);
        table.row(vec!["µµµ".into(), String::new()]);
        table.row(vec!["x".into(), "y".into()]);
        assert_eq!(table.render(), "A    B\nµµµ\nx    y\n");
    }

    #[test]
    fn short_rows_are_padded_and_long_ones_cut() {
        let mut table = Table::new(&["A", "B"]);
        table.row(vec!["1".into()]);
        table.row(vec!["1".into(), "2".into(), "3".into()]);
        assert_eq!(table.render(), "A  B\n1\n1  2\n");
    }
}
