//! Places tables in the kernel's row store: first fit over a list of free
//! ranges, merged again as tables are freed. The store is made of shards
//! (one kernel array each) added as tables need room and given back once
//! empty; no table spans two shards. When no free range is long enough
//! but enough rows are free in all (the store fragmented by tables of
//! every size coming and going), [`RowAllocator::compact`] plans moves of
//! tables into gaps below them until one range is long enough.

use hearth_common::unwind::UNWIND_SHARD_STRIDE_LOG2;

/// Free ranges `(first, len)` of the shards made so far, sorted and never
/// adjacent within a shard. Shard `n` holds rows `n << stride` onwards.
#[derive(Debug)]
pub struct RowAllocator {
    free: Vec<(u32, u32)>,
    shard_rows: u32,
    shards: u32,
}

/// The first row of shard `index`.
fn shard_start(index: u32) -> u32 {
    index << UNWIND_SHARD_STRIDE_LOG2
}

impl RowAllocator {
    /// An allocator with no shards yet, each of `shard_rows` rows when made.
    pub fn new(shard_rows: u32) -> Self {
        assert!(
            shard_rows <= 1 << UNWIND_SHARD_STRIDE_LOG2,
            "a shard larger than its stride"
        );
        Self {
            free: Vec::new(),
            shard_rows,
            shards: 0,
        }
    }

    /// Shards made.
    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// Rows of all shards made.
    pub fn capacity(&self) -> u64 {
        u64::from(self.shards) * u64::from(self.shard_rows)
    }

    /// Adds the next shard, all free.
    pub fn grow(&mut self) {
        self.free.push((shard_start(self.shards), self.shard_rows));
        self.shards += 1;
    }

    /// Takes back the last shard if no table is in it.
    pub fn shrink(&mut self) -> bool {
        let Some(last) = self.shards.checked_sub(1) else {
            return false;
        };
        if self.free.last() != Some(&(shard_start(last), self.shard_rows)) {
            return false;
        }
        self.free.pop();
        self.shards = last;
        true
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
        // Merge with the next range, then with the previous one, in the
        // same shard.
        let shard = first >> UNWIND_SHARD_STRIDE_LOG2;
        if let Some(&(next, next_len)) = self.free.get(index + 1)
            && first + len == next
            && next >> UNWIND_SHARD_STRIDE_LOG2 == shard
        {
            self.free[index].1 += next_len;
            self.free.remove(index + 1);
        }
        if index > 0 {
            let (previous, previous_len) = self.free[index - 1];
            if previous + previous_len == first && previous >> UNWIND_SHARD_STRIDE_LOG2 == shard {
                self.free[index - 1].1 += self.free[index].1;
                self.free.remove(index);
            }
        }
    }

    /// Rows in use.
    pub fn used(&self) -> u64 {
        self.capacity() - self.free_rows()
    }

    /// Rows free, in all ranges.
    pub fn free_rows(&self) -> u64 {
        self.free.iter().map(|&(_, len)| u64::from(len)).sum()
    }

    /// The longest free range.
    pub fn largest_free(&self) -> u32 {
        self.free.iter().map(|&(_, len)| len).max().unwrap_or(0)
    }

    /// First fit of `len` rows ending at or before row `limit`.
    fn allocate_below(&mut self, len: u32, limit: u32) -> Option<u32> {
        let index = self
            .free
            .iter()
            .take_while(|&&(first, _)| first + len <= limit)
            .position(|&(_, free)| free >= len)?;
        let (first, free) = self.free[index];
        if free == len {
            self.free.remove(index);
        } else {
            self.free[index] = (first + len, free - len);
        }
        Some(first)
    }

    /// Plans moves that make a free range of `need` rows: the highest
    /// table that fits a gap below itself moves there, again and again.
    /// `tables` are the allocated `(first, len)` ranges; the allocator's
    /// own state is updated as if the moves were done. Returns the moves
    /// `(from, to, len)` in the order they must be carried out (copy the
    /// rows, repoint every process entry, and only then reuse `from`), or
    /// nothing if no sequence of such moves makes room.
    pub fn compact(&mut self, tables: &[(u32, u32)], need: u32) -> Vec<(u32, u32, u32)> {
        let mut moves = Vec::new();
        if self.free_rows() < u64::from(need) {
            return moves;
        }
        let mut placed: Vec<(u32, u32)> = tables.iter().copied().filter(|t| t.1 > 0).collect();
        placed.sort_unstable();
        while self.largest_free() < need {
            // The highest table with a gap below it that holds it.
            let Some((index, to)) =
                placed
                    .iter()
                    .enumerate()
                    .rev()
                    .find_map(|(i, &(first, len))| {
                        let fits = self
                            .free
                            .iter()
                            .take_while(|&&(start, _)| start + len <= first)
                            .any(|&(_, free)| free >= len);
                        fits.then_some(i)
                            .map(|i| (i, self.allocate_below(len, first).expect("a gap was found")))
                    })
            else {
                break;
            };
            let (from, len) = placed.remove(index);
            self.free(from, len);
            moves.push((from, to, len));
            let at = placed.partition_point(|&(first, _)| first < to);
            placed.insert(at, (to, len));
        }
        moves
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One shard of `rows` rows.
    fn one_shard(rows: u32) -> RowAllocator {
        let mut allocator = RowAllocator::new(rows);
        allocator.grow();
        allocator
    }

    #[test]
    fn first_fit_and_freed_ranges_merge_back() {
        let mut rows = one_shard(100);
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

    #[test]
    fn compaction_moves_high_tables_into_low_gaps_until_the_request_fits() {
        let mut rows = one_shard(100);
        let a = rows.allocate(20).unwrap(); // 0..20
        let b = rows.allocate(20).unwrap(); // 20..40
        let c = rows.allocate(20).unwrap(); // 40..60
        let d = rows.allocate(20).unwrap(); // 60..80
        rows.free(a, 20);
        rows.free(c, 20);
        // Free: 0..20, 40..60, 80..100 — 60 rows, none longer than 20.
        assert_eq!(rows.allocate(40), None);
        let moves = rows.compact(&[(b, 20), (d, 20)], 40);
        assert_eq!(moves, [(60, 0, 20)], "d moves into the lowest gap");
        assert_eq!(rows.largest_free(), 60);
        assert_eq!(rows.allocate(40), Some(40));
        // Not enough free rows at all: nothing to plan.
        assert!(rows.compact(&[(0, 20), (20, 20), (40, 40)], 30).is_empty());
    }

    #[test]
    fn shards_are_added_filled_separately_and_given_back_when_empty() {
        let stride = 1 << UNWIND_SHARD_STRIDE_LOG2;
        let full = 1u32 << UNWIND_SHARD_STRIDE_LOG2;
        let mut rows = RowAllocator::new(full);
        assert_eq!(rows.allocate(1), None, "no shard yet");
        rows.grow();
        let a = rows.allocate(full - 10).unwrap();
        assert_eq!(rows.allocate(20), None, "10 rows left in shard 0");
        rows.grow();
        let b = rows.allocate(20).unwrap();
        assert_eq!(b, stride, "the table starts shard 1, it does not span");
        assert_eq!(rows.capacity(), 2 * u64::from(full));
        // Shard 0's tail and shard 1's head are adjacent row numbers when
        // a shard fills its stride; freeing must not join them.
        rows.free(b, 20);
        assert_eq!(rows.free, [(full - 10, 10), (stride, full)]);
        assert_eq!(rows.allocate(15), Some(stride));
        rows.free(stride, 15);
        assert!(rows.shrink(), "shard 1 is empty");
        assert!(!rows.shrink(), "shard 0 holds a table");
        assert_eq!(rows.shards(), 1);
        rows.free(a, full - 10);
        assert!(rows.shrink());
        assert_eq!((rows.shards(), rows.capacity(), rows.used()), (0, 0, 0));
    }

    /// Tables of many sizes coming and going, as on a busy node, with the
    /// array kept about 70% full: first fit soon refuses tables for want
    /// of one long enough free range although 30% is free; with
    /// compaction, it does not.
    #[test]
    fn under_churn_compaction_keeps_a_fragmented_array_usable() {
        let capacity = 1 << 16;
        let run = |compact: bool| -> (u32, u32) {
            let mut rows = one_shard(capacity);
            let mut live: Vec<(u32, u32)> = Vec::new();
            let mut seed = 0x2545_f491_4f6c_dd1du64;
            let mut random = move |n: u64| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed % n
            };
            let (mut refused, mut moved) = (0, 0);
            for _ in 0..50_000 {
                // From tens of rows (small libraries) to thousands (libc, runtimes).
                let bits = 4 + random(9);
                let len = 16 + random(1 << bits) as u32;
                while rows.used() + u64::from(len) > u64::from(capacity / 10 * 7) {
                    let (first, len) = live.swap_remove(random(live.len() as u64) as usize);
                    rows.free(first, len);
                }
                let mut first = rows.allocate(len);
                if first.is_none() && compact {
                    for (from, to, len) in rows.compact(&live, len) {
                        let table = live.iter_mut().find(|t| **t == (from, len)).unwrap();
                        *table = (to, len);
                        moved += 1;
                    }
                    first = rows.allocate(len);
                }
                match first {
                    Some(first) => live.push((first, len)),
                    None => refused += 1,
                }
            }
            (refused, moved)
        };
        let (first_fit, _) = run(false);
        let (compacted, moved) = run(true);
        eprintln!(
            "tables refused at 70% use: first fit {first_fit}, with compaction {compacted} \
             ({moved} tables moved)"
        );
        assert!(first_fit > 0, "the churn did not fragment the array");
        assert_eq!(compacted, 0);
    }
}
