//! Sequence accounting: which of a terminal's transaction sequence numbers the gateway
//! has seen, as the highest one and the ranges below it never seen (gaps). Online
//! requests only go up; offline sales uploaded later fill gaps; what stays open is
//! missing, and the completeness report names it exactly.

/// Gap ranges one terminal may have open. A terminal that skips numbers more often than
/// this is broken; the oldest gaps beyond it are dropped and counted (`abandoned`), so
/// memory per terminal stays bounded whatever a terminal sends.
pub const GAPS_MAX: usize = 1024;

/// What marking a number seen found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Above the highest: the highest moved up (any numbers skipped became a gap).
    Above,
    /// Inside a gap: the gap shrank or split.
    FilledGap,
    /// Already seen (or 0, never a sequence number): nothing changed.
    Duplicate,
}

/// A terminal's seen sequence numbers: every number in `1..=last` except those in
/// `gaps` (sorted, disjoint, inclusive ranges).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeqSet {
    pub last: u64,
    pub gaps: Vec<(u64, u64)>,
    pub abandoned: u64,
}

impl SeqSet {
    /// Whether `seq` was seen.
    pub fn contains(&self, seq: u64) -> bool {
        seq != 0 && seq <= self.last && self.gap_of(seq).is_none()
    }

    fn gap_of(&self, seq: u64) -> Option<usize> {
        // The first gap ending at or after seq; it holds seq if it starts at or before it.
        let i = self.gaps.partition_point(|(_, hi)| *hi < seq);
        self.gaps.get(i).filter(|(lo, _)| *lo <= seq).map(|_| i)
    }

    /// Marks `seq` seen.
    pub fn mark(&mut self, seq: u64) -> Seen {
        if seq == 0 {
            return Seen::Duplicate;
        }
        if seq > self.last {
            if seq > self.last + 1 {
                self.gaps.push((self.last + 1, seq - 1));
                if self.gaps.len() > GAPS_MAX {
                    self.gaps.remove(0);
                    self.abandoned += 1;
                }
            }
            self.last = seq;
            return Seen::Above;
        }
        let Some(i) = self.gap_of(seq) else {
            return Seen::Duplicate;
        };
        let (lo, hi) = self.gaps[i];
        match (seq == lo, seq == hi) {
            (true, true) => {
                self.gaps.remove(i);
            }
            (true, false) => self.gaps[i].0 = seq + 1,
            (false, true) => self.gaps[i].1 = seq - 1,
            (false, false) => {
                self.gaps[i].1 = seq - 1;
                self.gaps.insert(i + 1, (seq + 1, hi));
                if self.gaps.len() > GAPS_MAX {
                    self.gaps.remove(0);
                    self.abandoned += 1;
                }
            }
        }
        Seen::FilledGap
    }

    /// Numbers never seen below the highest.
    pub fn missing(&self) -> u64 {
        self.gaps.iter().map(|(lo, hi)| hi - lo + 1).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_jump_opens_a_gap_that_uploads_fill() {
        let mut s = SeqSet::default();
        assert_eq!(s.mark(1), Seen::Above);
        assert_eq!(s.mark(2), Seen::Above);
        assert_eq!(s.mark(7), Seen::Above);
        assert_eq!(s.gaps, vec![(3, 6)]);
        assert_eq!(s.mark(2), Seen::Duplicate);
        assert_eq!(s.mark(4), Seen::FilledGap);
        assert_eq!(s.gaps, vec![(3, 3), (5, 6)]);
        assert_eq!(s.mark(3), Seen::FilledGap);
        assert_eq!(s.mark(6), Seen::FilledGap);
        assert_eq!(s.gaps, vec![(5, 5)]);
        assert_eq!(s.missing(), 1);
        assert_eq!(s.mark(5), Seen::FilledGap);
        assert!(s.gaps.is_empty());
        assert_eq!(s.mark(0), Seen::Duplicate);
    }

    #[test]
    fn gaps_are_bounded_and_the_dropped_ones_counted() {
        let mut s = SeqSet::default();
        for i in 0..(GAPS_MAX as u64 + 10) {
            s.mark(2 * i + 2);
        }
        assert_eq!(s.gaps.len(), GAPS_MAX);
        assert_eq!(s.abandoned, 10);
    }

    proptest! {
        /// Whatever order numbers arrive in, the set holds exactly the numbers marked,
        /// and its gaps are sorted, disjoint and non-empty.
        #[test]
        fn the_set_is_exactly_what_was_marked(marks in proptest::collection::vec(1u64..200, 0..300)) {
            let mut s = SeqSet::default();
            let mut seen = std::collections::BTreeSet::new();
            for m in &marks {
                let fresh = seen.insert(*m);
                let r = s.mark(*m);
                prop_assert_eq!(r == Seen::Duplicate, !fresh);
            }
            let last = seen.iter().next_back().copied().unwrap_or(0);
            prop_assert_eq!(s.last, last);
            for n in 1..=last {
                prop_assert_eq!(s.contains(n), seen.contains(&n), "{}", n);
            }
            for w in s.gaps.windows(2) {
                prop_assert!(w[0].1 + 1 < w[1].0);
            }
            for (lo, hi) in &s.gaps {
                prop_assert!(lo <= hi);
            }
            prop_assert_eq!(s.missing(), last - seen.len() as u64);
        }
    }
}
