//! Where the groups of a matrix lie: along each row, `group_size` columns at a time.

use std::ops::Range;

use tenpak_api::{Error, Result};

/// The group grid of a `rows × cols` row-major matrix.
///
/// Groups run along each row (the input dimension), `ceil(cols / group_size)` of them per row;
/// the last group of a row is short when `group_size` does not divide `cols`, and a
/// `group_size >= cols` means one group per row. Groups never straddle rows, so every row can be
/// encoded and decoded on its own (that is what makes the row-parallel fast paths possible).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupLayout {
    rows: usize,
    cols: usize,
    group_size: usize,
}

impl GroupLayout {
    /// The layout of a `rows × cols` matrix in groups of `group_size` columns.
    ///
    /// Fails if `group_size` is 0 or if `rows * cols` overflows. Codecs apply their own lower
    /// bound (8) on top; the layout itself works for any positive size.
    pub fn new(rows: usize, cols: usize, group_size: usize) -> Result<Self> {
        if group_size == 0 {
            return Err(Error::invalid_param("group_size must be at least 1"));
        }
        if rows.checked_mul(cols).is_none() {
            return Err(Error::invalid_input(format!(
                "matrix [{rows}, {cols}] is too large"
            )));
        }
        Ok(Self {
            rows,
            cols,
            group_size,
        })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The group size as given (may exceed `cols`).
    pub fn group_size(&self) -> usize {
        self.group_size
    }

    /// Number of weights, `rows * cols`.
    pub fn numel(&self) -> usize {
        self.rows * self.cols
    }

    /// Groups per row: `ceil(cols / group_size)`, 0 when `cols` is 0.
    pub fn groups_per_row(&self) -> usize {
        self.cols.div_ceil(self.group_size)
    }

    /// Groups in the whole matrix: `rows * groups_per_row`.
    pub fn num_groups(&self) -> usize {
        self.rows * self.groups_per_row()
    }

    /// Fails unless `data` holds exactly `rows * cols` values.
    pub fn check_data(&self, data: &[f32]) -> Result<()> {
        if data.len() != self.numel() {
            return Err(Error::invalid_input(format!(
                "matrix [{}, {}] needs {} values, got {}",
                self.rows,
                self.cols,
                self.numel(),
                data.len()
            )));
        }
        Ok(())
    }

    /// The columns of group `group` (0-based within a row). The last one may be short.
    pub fn group_columns(&self, group: usize) -> Range<usize> {
        let start = group * self.group_size;
        start..(start + self.group_size).min(self.cols)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_cover_each_row_exactly_once() {
        for (cols, group_size) in [
            (100, 32),
            (576, 256),
            (64, 8),
            (17, 8),
            (5, 128),
            (0, 8),
            (128, 128),
        ] {
            let layout = GroupLayout::new(3, cols, group_size).unwrap();
            let mut next = 0;
            for g in 0..layout.groups_per_row() {
                let range = layout.group_columns(g);
                assert_eq!(range.start, next, "cols {cols} g {group_size}");
                assert!(!range.is_empty() && range.len() <= group_size);
                next = range.end;
            }
            assert_eq!(next, cols);
            assert_eq!(layout.groups_per_row(), cols.div_ceil(group_size));
        }
        assert!(GroupLayout::new(1, 1, 0).is_err());
    }
}
