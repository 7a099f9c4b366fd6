//! Which devices a reader may see: the answer of the access rules,
//! which every reader (SQL predicates, the live feed, exports) applies.

/// The devices a reader may see: everything, or the devices of some users
/// plus some single devices (a friends group's members).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Visible {
    /// Every device (an admin, or no authentication).
    #[default]
    All,
    /// Only these.
    Some {
        /// Every device of these users.
        users: Vec<String>,
        /// These `(user, device)` pairs.
        devices: Vec<(String, String)>,
    },
}

impl Visible {
    /// Whether `user`'s `device` may be read.
    pub fn allows(&self, user: &str, device: &str) -> bool {
        match self {
            Visible::All => true,
            Visible::Some { users, devices } => {
                users.iter().any(|u| u == user)
                    || devices.iter().any(|(u, d)| u == user && d == device)
            }
        }
    }

    /// Whether any device of `user` may be read.
    pub fn allows_user(&self, user: &str) -> bool {
        match self {
            Visible::All => true,
            Visible::Some { users, devices } => {
                users.iter().any(|u| u == user) || devices.iter().any(|(u, _)| u == user)
            }
        }
    }
}

impl Visible {
    /// Nothing at all.
    pub fn none() -> Self {
        Visible::Some {
            users: Vec::new(),
            devices: Vec::new(),
        }
    }

    /// Whether nothing may be read.
    pub fn is_none(&self) -> bool {
        matches!(self, Visible::Some { users, devices } if users.is_empty() && devices.is_empty())
    }
}
