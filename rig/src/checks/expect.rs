//! `expect`: the bounds on a count of events (the count comes from the
//! timeline's cell index).

use crate::timeline::EventTag;

use super::Verdict;

/// `expect`'s verdict for `who` having seen `seen` events; without bounds
/// it means "at least one".
pub fn verdict(who: &str, seen: u64, tag: EventTag, min: Option<u64>, max: Option<u64>, since: &str) -> Verdict {
    let min = if min.is_none() && max.is_none() { Some(1) } else { min };
    if let Some(lo) = min
        && seen < lo
    {
        return Verdict::Fail(format!("{who}: expected at least {lo} {tag} {since}, saw {seen}"));
    }
    if let Some(hi) = max
        && seen > hi
    {
        return Verdict::Fail(format!("{who}: expected at most {hi} {tag} {since}, saw {seen}"));
    }
    Verdict::Pass(format!("{seen} {tag} {since}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONNECTED: EventTag = EventTag::CloudConnected;

    #[test]
    fn expect_reports_both_bounds() {
        let fail = |v: Verdict| match v {
            Verdict::Fail(m) => m,
            Verdict::Pass(p) => panic!("passed: {p}"),
        };
        assert!(
            fail(verdict("d1", 2, EventTag::CloudResumed, Some(3), None, "since start"))
                .contains("expected at least 3 cloud.resumed since start, saw 2")
        );
        assert!(fail(verdict("d1", 1, CONNECTED, None, Some(0), "after 'm'")).contains("at most 0"));
        assert!(
            !verdict("d1", 0, CONNECTED, None, None, "s").passed(),
            "no bounds means at least one"
        );
        assert!(verdict("d1", 3, CONNECTED, Some(3), Some(3), "s").passed());
    }
}
