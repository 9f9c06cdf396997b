//! Merges points into as few reads as the protocol allows.
//!
//! A read covers one contiguous range of one table, at most 125 registers or 2000 bits. Two
//! points may share a read when the unrequested addresses between them number at most
//! `max_gap` (reading a few unused registers is cheaper than a second request, but some
//! devices refuse reads that touch unmapped addresses, so the gap is configurable; 0 merges
//! only adjacent points).
//!
//! Per table, the points sorted by address are packed greedily: a read starts at the first
//! point not yet covered and takes every following point while the gap and the size limit
//! allow. Greedy is optimal here (the tests check it against an exhaustive search): any read
//! that covers the first uncovered point can be moved to start exactly there without
//! covering fewer later points.

use super::{PointSpec, Table};

/// One read of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPlan {
    /// Table to read.
    pub table: Table,
    /// First address.
    pub start: u16,
    /// Registers or bits.
    pub count: u16,
    /// Indices (into the planner's input) of the points this read serves.
    pub points: Vec<usize>,
}

/// Plans reads for `points`. Every point lands in exactly one read; reads of a table come in
/// address order, tables in the order coil, discrete, input, holding.
pub fn plan(points: &[PointSpec], max_gap: u16) -> Vec<ReadPlan> {
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by_key(|&i| (points[i].table, points[i].address, points[i].len()));
    let mut out: Vec<ReadPlan> = Vec::new();
    // (plan index, end of the current read) for the read being built.
    let mut current: Option<(usize, u32)> = None;
    for i in order {
        let p = &points[i];
        if let Some((idx, end)) = current {
            let r = &mut out[idx];
            let gap = i64::from(p.address) - i64::from(end);
            let new_end = end.max(p.end());
            if r.table == p.table
                && gap <= i64::from(max_gap)
                && new_end - u32::from(r.start) <= u32::from(p.table.max_read())
            {
                r.count = (new_end - u32::from(r.start)) as u16;
                r.points.push(i);
                current = Some((idx, new_end));
                continue;
            }
        }
        out.push(ReadPlan {
            table: p.table,
            start: p.address,
            count: p.len(),
            points: vec![i],
        });
        current = Some((out.len() - 1, p.end()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::{DataType, PointSpec, Table};
    use super::*;
    use proptest::prelude::*;

    fn pt(table: Table, address: u16, ty: DataType) -> PointSpec {
        PointSpec::new(table, address, ty)
    }

    /// Fewest reads for the points of one table, by exhaustive dynamic programming over
    /// every way to cut the sorted points into consecutive groups: an independent check on
    /// the greedy planner.
    fn fewest_reads(points: &[PointSpec], max_gap: u16) -> usize {
        let mut tables: Vec<Table> = points.iter().map(|p| p.table).collect();
        tables.sort();
        tables.dedup();
        let mut total = 0;
        for t in tables {
            let mut ps: Vec<&PointSpec> = points.iter().filter(|p| p.table == t).collect();
            ps.sort_by_key(|p| (p.address, p.len()));
            let n = ps.len();
            let feasible = |a: usize, b: usize| {
                // Points a..=b in one read.
                let start = u32::from(ps[a].address);
                let mut end = ps[a].end();
                for p in &ps[a + 1..=b] {
                    if i64::from(p.address) - i64::from(end) > i64::from(max_gap) {
                        return false;
                    }
                    end = end.max(p.end());
                }
                end - start <= u32::from(t.max_read())
            };
            let mut best = vec![usize::MAX; n + 1];
            best[0] = 0;
            for b in 1..=n {
                for a in 0..b {
                    if best[a] != usize::MAX && feasible(a, b - 1) {
                        best[b] = best[b].min(best[a] + 1);
                    }
                }
            }
            total += best[n];
        }
        total
    }

    fn check_plan(points: &[PointSpec], max_gap: u16, reads: &[ReadPlan]) {
        let mut seen = vec![0; points.len()];
        for r in reads {
            assert!(r.count <= r.table.max_read(), "{r:?} too large");
            for &i in &r.points {
                let p = &points[i];
                assert_eq!(p.table, r.table);
                assert!(p.address >= r.start && p.end() <= u32::from(r.start) + u32::from(r.count));
                seen[i] += 1;
            }
        }
        assert!(seen.iter().all(|&n| n == 1), "each point exactly once");
        let _ = max_gap;
    }

    #[test]
    fn mixed_tables_are_merged_optimally() {
        let points = vec![
            pt(Table::HoldingRegister, 0, DataType::F32),
            pt(Table::HoldingRegister, 2, DataType::U16),
            pt(Table::HoldingRegister, 5, DataType::U32), // gap of 2 after 3
            pt(Table::HoldingRegister, 100, DataType::F64), // far away
            pt(Table::InputRegister, 0, DataType::I16),
            pt(Table::InputRegister, 1, DataType::I16),
            pt(Table::Coil, 0, DataType::Bool),
            pt(Table::Coil, 7, DataType::Bool),
            pt(Table::DiscreteInput, 3, DataType::Bool),
            pt(Table::HoldingRegister, 108, DataType::U16), // gap of 4 after the f64
        ];
        let reads = plan(&points, 10);
        check_plan(&points, 10, &reads);
        assert_eq!(reads.len(), fewest_reads(&points, 10));
        assert_eq!(reads.len(), 5);
        let holding: Vec<_> = reads
            .iter()
            .filter(|r| r.table == Table::HoldingRegister)
            .map(|r| (r.start, r.count))
            .collect();
        assert_eq!(holding, vec![(0, 7), (100, 9)]);
        // With no gap allowed: holding splits in four, coils in two.
        let strict = plan(&points, 0);
        assert_eq!(strict.len(), fewest_reads(&points, 0));
        assert_eq!(strict.len(), 8);
    }

    #[test]
    fn respects_the_size_limits() {
        let regs: Vec<_> = (0..200)
            .map(|a| pt(Table::HoldingRegister, a, DataType::U16))
            .collect();
        let reads = plan(&regs, 0);
        assert_eq!(
            reads.iter().map(|r| r.count).collect::<Vec<_>>(),
            vec![125, 75]
        );
        let bits: Vec<_> = (0..4001)
            .map(|a| pt(Table::Coil, a, DataType::Bool))
            .collect();
        let reads = plan(&bits, 0);
        assert_eq!(
            reads.iter().map(|r| r.count).collect::<Vec<_>>(),
            vec![2000, 2000, 1]
        );
        // A 4-register value never straddles two reads.
        let mut p: Vec<_> = (0..123)
            .map(|a| pt(Table::InputRegister, a, DataType::U16))
            .collect();
        p.push(pt(Table::InputRegister, 123, DataType::F64));
        let reads = plan(&p, 0);
        assert_eq!(reads.len(), 2);
        check_plan(&p, 0, &reads);
    }

    #[test]
    fn top_of_the_address_space() {
        let p = vec![
            pt(Table::HoldingRegister, 65534, DataType::U16),
            pt(Table::HoldingRegister, 65535, DataType::U16),
        ];
        let reads = plan(&p, 0);
        assert_eq!(
            reads,
            vec![ReadPlan {
                table: Table::HoldingRegister,
                start: 65534,
                count: 2,
                points: vec![0, 1]
            }]
        );
    }

    fn any_point() -> impl Strategy<Value = PointSpec> {
        (
            prop_oneof![
                Just(Table::Coil),
                Just(Table::DiscreteInput),
                Just(Table::InputRegister),
                Just(Table::HoldingRegister)
            ],
            0u16..400,
            prop_oneof![
                Just(DataType::U16),
                Just(DataType::F32),
                Just(DataType::F64)
            ],
        )
            .prop_map(|(t, a, ty)| pt(t, a, ty))
    }

    proptest! {
        #[test]
        fn greedy_is_optimal_and_complete(
            points in proptest::collection::vec(any_point(), 0..40),
            max_gap in 0u16..30,
        ) {
            let reads = plan(&points, max_gap);
            check_plan(&points, max_gap, &reads);
            prop_assert_eq!(reads.len(), fewest_reads(&points, max_gap));
        }
    }
}
