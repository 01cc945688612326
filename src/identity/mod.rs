//! Who may connect: the identities the hub knows and what a connecting client claims to be.
//!
//! - [`id`]: IoT Hub's rules for device and module ids;
//! - [`key`]: symmetric keys, never logged;
//! - [`registry`]: the identity registry under the data folder, shared with `edgehub identity`;
//! - [`scope`]: the device scope of a child edge device (spec 6.2): what this hub serves a
//!   child, and what a child learns from the answer, in the legacy API's JSON;
//! - [`username`]: the CONNECT username grammar and the client id check.
//!
//! Proving a claim (SAS tokens) is [`crate::sas`]'s job.

pub mod id;
pub mod key;
pub mod registry;
pub mod scope;
pub mod username;

pub use id::{IdError, validate_device_id, validate_module_id};
pub use key::{KeyFingerprint, KeySlot, SymmetricKey};
pub use registry::{Identity, IdentityError, IdentityRegistry, KeyStatus, Origin, UpstreamChanges};
pub use username::{ClientIdentity, Username, UsernameError, check_client_id, parse_username};

/// The names clients use to reach the hub, as the configuration gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hostnames {
    /// The IoT Hub's hostname (`HostName=` of connection strings).
    pub iothub: String,
    /// The edge device's own hostname (`GatewayHostName=`; the server certificate's name).
    pub gateway: String,
}
