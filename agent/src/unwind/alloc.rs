//! Places tables in the kernel's row array: first fit over a list of free
//! ranges, merged again as tables are freed.

/// Free ranges `(first, len)` of an array of `capacity` rows, sorted and
/// never adjacent.
#[derive(Debug)]
pub struct RowAllocator {
    free: Vec<(u32, u32)>,
    capacity: u32,
}

impl RowAllocator {
    pub fn new(capacity: u32) -> Self {
        Self {
            free: if capacity > 0 {
                vec![(0, capacity)]
            } else {
                Vec::new()
            },
            capacity,
        }
    }

    /// The first row of `len` free rows in a row, if there are.
    pub fn allocate(&mut self, len: u32) -> Option<u32> {
        if len == 0 {
            return None;
        }
        let index = self.free.iter().position(|&(_, free)| free >= len)?;
        let (first, free) = self.free[index];
        if free == len {
            self.free.remove(index);
        } else {
            self.free[index] = (first + len, free - len);
        }
        Some(first)
    }

    /// Gives back rows `first..first + len`, allocated earlier.
    pub fn free(&mut self, first: u32, len: u32) {
        let index = self.free.partition_point(|&(start, _)| start < first);
        self.free.insert(index, (first, len));
        // Merge with the next range, then with the previous one.
        if let Some(&(next, next_len)) = self.free.get(index + 1)
            && first + len == next
        {
            self.free[index].1 += next_len;
            self.free.remove(index + 1);
        }
        if index > 0 {
            let (previous, previous_len) = self.free[index - 1];
            if previous + previous_len == first {
                self.free[index - 1].1 += self.free[index].1;
                self.free.remove(index);
            }
        }
    }

    /// Rows in use.
    pub fn used(&self) -> u32 {
        self.capacity - self.free.iter().map(|&(_, len)| len).sum::<u32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_and_freed_ranges_merge_back() {
        let mut rows = RowAllocator::new(100);
        assert_eq!(rows.allocate(30), Some(0));
        assert_eq!(rows.allocate(30), Some(30));
        assert_eq!(rows.allocate(30), Some(60));
        assert_eq!(rows.allocate(30), None, "only 10 left");
        assert_eq!(rows.used(), 90);
        rows.free(30, 30);
        assert_eq!(rows.allocate(40), None, "30 + 10 are not adjacent");
        rows.free(0, 30);
        assert_eq!(rows.free, [(0, 60), (90, 10)]);
        rows.free(60, 30);
        assert_eq!(rows.free, [(0, 100)], "all merged into one range");
        assert_eq!(rows.used(), 0);
        assert_eq!(rows.allocate(100), Some(0));
        assert_eq!(rows.allocate(0), None);
    }
}
