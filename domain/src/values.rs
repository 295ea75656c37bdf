//! Small value types shared by aggregates, read models and the API.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A job's priority; `critical` outranks everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Critical,
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    pub const ALL: [Priority; 4] = [Self::Critical, Self::High, Self::Normal, Self::Low];

    /// 0 for `critical` … 3 for `low`: smaller is more urgent (index friendly).
    pub fn rank(self) -> i16 {
        match self {
            Self::Critical => 0,
            Self::High => 1,
            Self::Normal => 2,
            Self::Low => 3,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::High => "high",
            Self::Normal => "normal",
            Self::Low => "low",
        }
    }
}

impl FromStr for Priority {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Self::ALL.into_iter().find(|p| p.as_str() == s).ok_or(())
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a job is in its life (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Not submitted yet: only the aggregate's empty state has it.
    #[default]
    New,
    Blocked,
    Queued,
    Leased,
    Running,
    Review,
    Shipped,
    Failed,
    Cancelled,
}

impl Stage {
    pub const ALL: [Stage; 8] = [
        Self::Blocked,
        Self::Queued,
        Self::Leased,
        Self::Running,
        Self::Review,
        Self::Shipped,
        Self::Failed,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Blocked => "blocked",
            Self::Queued => "queued",
            Self::Leased => "leased",
            Self::Running => "running",
            Self::Review => "review",
            Self::Shipped => "shipped",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Terminal for the scheduler: no more work will be done (SPEC §11).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Review | Self::Shipped | Self::Failed | Self::Cancelled
        )
    }

    /// A lease is held in these stages.
    pub fn holds_lease(self) -> bool {
        matches!(self, Self::Leased | Self::Running)
    }
}

impl FromStr for Stage {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Self::ALL.into_iter().find(|p| p.as_str() == s).ok_or(())
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
