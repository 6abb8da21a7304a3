//! The sample generators, by task category, and the share of each family within its category.

mod icl;
mod niah;
mod rs_lcc;
mod sotu_next;
mod sotu_sum;
mod two_hop;
mod vt;

use flux_router::TaskCategory;

use super::draft::{Attempt, Draft, Gen};
use icl::IclTask;

/// A generator family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    Niah,
    SotuNext,
    Vt,
    TwoHop,
    SotuSum,
    RsLcc,
    Icl(IclTask),
}

/// Every family name, by category, with its share (in percent) of the category.
pub const FAMILIES: &[(TaskCategory, &str, u32)] = &[
    (TaskCategory::SingleDocQa, "niah", 60),
    (TaskCategory::SingleDocQa, "sotu_next", 40),
    (TaskCategory::MultiHopQa, "vt", 50),
    (TaskCategory::MultiHopQa, "two_hop", 50),
    (TaskCategory::Summarization, "sotu_sum", 100),
    (TaskCategory::Code, "rs_lcc", 100),
    (TaskCategory::InContextLearning, "icl_sort", 25),
    (TaskCategory::InContextLearning, "icl_count", 25),
    (TaskCategory::InContextLearning, "icl_base", 25),
    (TaskCategory::InContextLearning, "icl_reverse", 25),
];

impl Family {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "niah" => Self::Niah,
            "sotu_next" => Self::SotuNext,
            "vt" => Self::Vt,
            "two_hop" => Self::TwoHop,
            "sotu_sum" => Self::SotuSum,
            "rs_lcc" => Self::RsLcc,
            other => Self::Icl(*IclTask::ALL.iter().find(|t| t.family() == other)?),
        })
    }

    /// The family of `category` whose share covers `percent` (0..100).
    pub fn choose(category: TaskCategory, percent: u32) -> Self {
        let mut acc = 0;
        let mut last = None;
        for &(_, name, share) in FAMILIES.iter().filter(|f| f.0 == category) {
            acc += share;
            last = Family::from_name(name);
            if percent < acc {
                break;
            }
        }
        last.unwrap_or(Self::Niah)
    }

    /// Draws one draft.
    pub fn generate(self, g: &mut Gen) -> Attempt<Draft> {
        match self {
            Self::Niah => niah::niah(g),
            Self::SotuNext => sotu_next::sotu_next(g),
            Self::Vt => vt::vt(g),
            Self::TwoHop => two_hop::two_hop(g),
            Self::SotuSum => sotu_sum::sotu_sum(g),
            Self::RsLcc => rs_lcc::rs_lcc(g),
            Self::Icl(task) => icl::icl(g, task),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_resolves_and_shares_sum_to_100() {
        for c in TaskCategory::ALL {
            let total: u32 = FAMILIES.iter().filter(|f| f.0 == c).map(|f| f.2).sum();
            assert_eq!(total, 100, "{c:?}");
        }
        for f in FAMILIES {
            assert!(Family::from_name(f.1).is_some(), "{}", f.1);
        }
        assert_eq!(Family::choose(TaskCategory::SingleDocQa, 59), Family::Niah);
        assert_eq!(
            Family::choose(TaskCategory::SingleDocQa, 60),
            Family::SotuNext
        );
    }
}
