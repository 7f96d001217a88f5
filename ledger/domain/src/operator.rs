//! Operators: who may use the admin API, with which role, and how a bearer token maps
//! to one of them. (New tokens come from the ledger, which owns the randomness.)
//!
//! Tokens are 32 random bytes shown once (hex, behind a `cg_` prefix); the gateway keeps
//! only their SHA-256. A fast hash is enough here: slow password hashes (argon2, bcrypt)
//! exist to make guessing low-entropy passwords expensive, but guessing a 256-bit random
//! token is infeasible at any hash speed, and a fast hash keeps every API call cheap.
//! The lookup is by digest in a map, so comparing a presented token leaks nothing an
//! attacker could use: the digest of a guess says nothing about a stored one.
//!
//! Passwords (the console's sign-in) are the opposite case: chosen by people, so few
//! bits, so they are kept as a slow argon2id hash (`PasswordRecord`), made and checked
//! by the ledger. Like the token hash, it never leaves the gateway.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Refusal;

/// Roles, following the duty statement of the one-card centre.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Everything.
    Director,
    /// Terminals, merchants, operators, parameters.
    SystemAdmin,
    /// Batch import, batch grants, parameters, reports, audit.
    DataAdmin,
    /// Card lifecycle, top-up, refunds, fees, consumption details.
    CardDesk,
    /// Door permissions and access logs (nothing to do until doors exist).
    DoorAdmin,
    /// Attendance (nothing to do until attendance exists).
    AttendanceAdmin,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Director,
        Role::SystemAdmin,
        Role::DataAdmin,
        Role::CardDesk,
        Role::DoorAdmin,
        Role::AttendanceAdmin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Director => "director",
            Role::SystemAdmin => "system_admin",
            Role::DataAdmin => "data_admin",
            Role::CardDesk => "card_desk",
            Role::DoorAdmin => "door_admin",
            Role::AttendanceAdmin => "attendance_admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Least privilege: each role gets the endpoint groups its duty needs.
    pub fn allows(self, p: Permission) -> bool {
        use Permission::*;
        match self {
            Role::Director => true,
            Role::SystemAdmin => matches!(p, Operators | Params | Audit | Blacklist | Terminals),
            Role::DataAdmin => matches!(
                p,
                Import | Grants | Params | Audit | Fees | History | Persons | Backups | Integrity | Settlement
            ),
            Role::CardDesk => matches!(p, Cards | Persons | Money | History | Fees | Blacklist | Stock),
            Role::DoorAdmin => matches!(p, Doors),
            Role::AttendanceAdmin => matches!(p, Attendance),
        }
    }
}

/// Endpoint groups of the admin API; a role is allowed a set of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Persons and accounts: open, look up, change name/department/kind.
    Persons,
    /// Card lifecycle: issue, lost, unfreeze, freeze, bad, replace, cancel, batch cancel.
    Cards,
    /// Desk money: top-up, refund, fees, adjustments.
    Money,
    /// Consumption details.
    History,
    /// The daily fee list.
    Fees,
    /// Batch grants (subsidies).
    Grants,
    /// CSV batch import.
    Import,
    /// Business parameters.
    Params,
    /// Operators and their tokens.
    Operators,
    /// The audit trail.
    Audit,
    /// Blacklist status and terminals behind it.
    Blacklist,
    /// Door access (roadmap).
    Doors,
    /// Attendance (roadmap).
    Attendance,
    /// Merchants, door groups, terminals: the registry, the inventory, keys.
    Terminals,
    /// Who received which terminal's key (the director's record).
    KeyRecords,
    /// Blank card stock: deliveries, spoilage, the weekly count.
    Stock,
    /// Backups of the gateway's data (the data admin's daily duty).
    Backups,
    /// The integrity check: the hash chain, balances, the central store's totals.
    Integrity,
    /// Merchant settlement (商户结算): each day's figures and their close.
    Settlement,
}

impl Permission {
    pub const ALL: [Permission; 19] = [
        Permission::Persons,
        Permission::Cards,
        Permission::Money,
        Permission::History,
        Permission::Fees,
        Permission::Grants,
        Permission::Import,
        Permission::Params,
        Permission::Operators,
        Permission::Audit,
        Permission::Blacklist,
        Permission::Doors,
        Permission::Attendance,
        Permission::Terminals,
        Permission::KeyRecords,
        Permission::Stock,
        Permission::Backups,
        Permission::Integrity,
        Permission::Settlement,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Persons => "persons",
            Permission::Cards => "cards",
            Permission::Money => "money",
            Permission::History => "history",
            Permission::Fees => "fees",
            Permission::Grants => "grants",
            Permission::Import => "import",
            Permission::Params => "params",
            Permission::Operators => "operators",
            Permission::Audit => "audit",
            Permission::Blacklist => "blacklist",
            Permission::Doors => "doors",
            Permission::Attendance => "attendance",
            Permission::Terminals => "terminals",
            Permission::KeyRecords => "key_records",
            Permission::Stock => "stock",
            Permission::Backups => "backups",
            Permission::Settlement => "settlement",
            Permission::Integrity => "integrity",
        }
    }
}

/// The SHA-256 of a token.
pub type TokenHash = [u8; 32];

/// Random bytes in a token.
pub const TOKEN_BYTES: usize = 32;
/// Every token starts with this, so a leaked one is recognisable in logs and scanners.
pub const TOKEN_PREFIX: &str = "cg_";
/// Operator names: long enough for a full name, short enough for a log line.
pub const OPERATOR_NAME_BYTES_MAX: usize = 64;

pub fn hash_token(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operator {
    pub id: u64,
    pub name: String,
    pub role: Role,
    /// Never leaves the gateway: whatever ships entries elsewhere must leave it out.
    pub token_hash: TokenHash,
    pub enabled: bool,
    pub created_ms: i64,
}

/// Shortest console password: NIST SP 800-63B's minimum for a password a person chose.
pub const PASSWORD_CHARS_MIN: usize = 8;
/// Longest console password: room for a passphrase; argon2's cost does not depend on
/// the length, this only bounds what a sign-in form may carry.
pub const PASSWORD_BYTES_MAX: usize = 256;

/// An operator's console password as the gateway keeps it: the argon2id hash as a PHC
/// string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`), which carries its own
/// parameters, so that raising them later leaves older hashes verifiable.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordRecord {
    pub operator_id: u64,
    /// Never leaves the gateway: whatever ships entries elsewhere must leave it out.
    pub phc: String,
    /// Set by someone else (a reset, or the command line): the console asks its owner
    /// for a new one at the next sign-in.
    pub must_change: bool,
    pub set_ms: i64,
}

/// The hash stays out of logs and panics.
impl std::fmt::Debug for PasswordRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordRecord")
            .field("operator_id", &self.operator_id)
            .field("phc", &"<hidden>")
            .field("must_change", &self.must_change)
            .field("set_ms", &self.set_ms)
            .finish()
    }
}

/// A password someone may choose: long enough, short enough, no control characters
/// (nobody can type them into the sign-in form, and they hide in logs of mistakes).
pub fn validate_password(password: &str) -> Result<(), Refusal> {
    let chars = password.chars().count();
    if chars < PASSWORD_CHARS_MIN {
        return Err(Refusal(format!(
            "a password needs at least {PASSWORD_CHARS_MIN} characters"
        )));
    }
    if password.len() > PASSWORD_BYTES_MAX {
        return Err(Refusal(format!(
            "a password may have at most {PASSWORD_BYTES_MAX} bytes"
        )));
    }
    if password.chars().any(char::is_control) {
        return Err(Refusal("a password may not contain control characters".into()));
    }
    Ok(())
}

/// Who did something, as recorded in every operator-initiated entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub operator_id: u64,
    pub name: String,
    pub role: Role,
}

impl Actor {
    /// The command line on the gateway machine (`cardgate operator add`): whoever can
    /// run it owns the data directory anyway.
    pub fn cli() -> Actor {
        Actor {
            operator_id: 0,
            name: "cli".into(),
            role: Role::Director,
        }
    }

    pub fn of(op: &Operator) -> Actor {
        Actor {
            operator_id: op.id,
            name: op.name.clone(),
            role: op.role,
        }
    }
}

pub fn validate_operator_name(name: &str) -> Result<(), Refusal> {
    if name.is_empty() || name.len() > OPERATOR_NAME_BYTES_MAX || name.chars().any(char::is_control) {
        return Err(Refusal(format!(
            "operator name must be 1..={OPERATOR_NAME_BYTES_MAX} bytes without control characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_and_follow_least_privilege() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
            assert!(r == Role::Director || !Permission::ALL.iter().all(|p| r.allows(*p)));
        }
        assert!(Role::CardDesk.allows(Permission::Cards));
        assert!(!Role::CardDesk.allows(Permission::Import));
        assert!(!Role::CardDesk.allows(Permission::Operators));
        assert!(Role::DataAdmin.allows(Permission::Import));
        assert!(!Role::DataAdmin.allows(Permission::Cards));
        assert!(Role::SystemAdmin.allows(Permission::Operators));
        assert!(!Role::DoorAdmin.allows(Permission::Money));
        assert!(Role::SystemAdmin.allows(Permission::Terminals));
        assert!(
            !Role::SystemAdmin.allows(Permission::KeyRecords),
            "the director's record"
        );
        assert!(Role::Director.allows(Permission::KeyRecords));
        assert!(Role::CardDesk.allows(Permission::Stock));
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn passwords_are_checked_for_length_and_control_characters() {
        assert!(validate_password("correct horse").is_ok());
        assert!(validate_password("密码是八个汉字呀").is_ok(), "characters, not bytes");
        assert!(validate_password("short").is_err());
        assert!(validate_password("tab\there-is-bad").is_err());
        assert!(validate_password(&"x".repeat(PASSWORD_BYTES_MAX)).is_ok());
        assert!(validate_password(&"x".repeat(PASSWORD_BYTES_MAX + 1)).is_err());
        let r = PasswordRecord {
            operator_id: 1,
            phc: "$argon2id$secret".into(),
            must_change: false,
            set_ms: 0,
        };
        assert!(!format!("{r:?}").contains("secret"));
    }
}
