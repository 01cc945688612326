//! Authentication of a CONNECT: the seam between the MQTT head and the identity registry.

use std::fmt;

use crate::identity::{KeyFingerprint, KeySlot, KeyStatus};

/// The identity a connection acts as, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The device id.
    pub device_id: String,
    /// The module id, for modules.
    pub module_id: Option<String>,
}

impl Identity {
    /// The MQTT client id of this identity: `device` or `device/module`.
    pub fn client_id(&self) -> String {
        match &self.module_id {
            Some(module) => format!("{}/{module}", self.device_id),
            None => self.device_id.clone(),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.client_id())
    }
}

/// The credentials of a CONNECT packet.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials<'a> {
    /// The client id.
    pub client_id: &'a str,
    /// The username, if any.
    pub username: Option<&'a str>,
    /// The password (a SAS token), if any. Never logged.
    pub password: Option<&'a str>,
}

impl fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.map(|_| "<redacted>"))
            .finish()
    }
}

/// A connection's proven identity, and until when its credentials hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Who the connection acts as.
    pub identity: Identity,
    /// When the credentials expire (a SAS token's `se` plus the clock skew); the connection is
    /// closed then, and the SDK reconnects with a fresh token. `None`: no expiry.
    pub valid_until: Option<std::time::SystemTime>,
    /// The IoT Plug and Play model id the client announced (`model-id` in its username); the
    /// hub stamps it on the client's messages as the system property `modelId`.
    pub model_id: Option<String>,
    /// The key that signed the credentials, for [`Authenticator::recheck`]; `None` when the
    /// credentials are not tied to a key of the identity registry.
    pub key: Option<GrantKey>,
}

/// Which key of its identity authenticated a connection: enough to tell later whether that key
/// was rotated, nothing that reveals it (safe to log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantKey {
    /// The key's slot when it authenticated the connection.
    pub slot: KeySlot,
    /// The key's fingerprint (SHA-256 of the key).
    pub fingerprint: KeyFingerprint,
    /// Whose key it is when not the connection's own identity: the `$edgeHub` of the child
    /// edge device that connects on the identity's behalf (spec 1.5).
    pub signer: Option<Identity>,
}

/// Decides who a connection is. Every refusal is answered with CONNACK 5 (decision D1); the
/// reason is logged, never the token.
pub trait Authenticator: fmt::Debug + Send + Sync + 'static {
    /// The identity these credentials prove, or why they do not.
    ///
    /// # Errors
    ///
    /// A reason for the log when the credentials are refused.
    fn authenticate(&self, credentials: &Credentials<'_>) -> Result<Grant, String>;

    /// Whether a connection authenticated earlier with `grant` may stay: `Ok` while its
    /// identity exists and the key that authenticated it is still one of the identity's
    /// current keys. Cheap when nothing changed; meant to be called every few seconds per
    /// connection. The default accepts every grant (authenticators without a registry).
    ///
    /// # Errors
    ///
    /// Why the connection must be closed (for the log: names the identity and the key's
    /// slot, never a key).
    fn recheck(&self, grant: &Grant) -> Result<(), String> {
        let _ = grant;
        Ok(())
    }

    /// A number that changes whenever what [`recheck`](Self::recheck) judges by may have
    /// changed (identities removed, keys rotated): the hub polls it, and connections recheck
    /// only when it moved. The default never changes.
    fn generation(&self) -> u64 {
        0
    }

    /// The identity registry this authenticator judges by, and the hostnames tokens may name:
    /// what the device-scope API ([`crate::http::scope`]) answers from. The default has none
    /// (the API is then not served).
    fn registry(
        &self,
    ) -> Option<(
        &crate::identity::IdentityRegistry,
        &crate::identity::Hostnames,
    )> {
        None
    }
}

/// The hub's authenticator: SAS tokens checked against the identity registry (protocol spec 1.2
/// and 1.3), which is re-read when another process (`edgehub identity add`) changed it.
#[derive(Debug)]
pub struct SasAuthenticator {
    identities: std::sync::Arc<crate::identity::IdentityRegistry>,
    hostnames: crate::identity::Hostnames,
    /// Woken when a client is refused for an identity or key this hub may not have learned
    /// yet from upstream (the device-scope sync fetches its scope then).
    unknown_identity: Option<std::sync::Arc<tokio::sync::Notify>>,
}

impl SasAuthenticator {
    /// An authenticator over `identities`, accepting tokens for these hostnames.
    pub fn new(
        identities: impl Into<std::sync::Arc<crate::identity::IdentityRegistry>>,
        hostnames: crate::identity::Hostnames,
    ) -> Self {
        Self {
            identities: identities.into(),
            hostnames,
            unknown_identity: None,
        }
    }

    /// Wakes `notify` (one permit, never a queue) whenever a client is refused for an unknown
    /// identity, a key that matches none, or an on-behalf-of client outside the known scope:
    /// what the device-scope sync ([`crate::upstream::scope`]) may not have learned yet.
    #[must_use]
    pub fn with_unknown_identity_hint(
        mut self,
        notify: std::sync::Arc<tokio::sync::Notify>,
    ) -> Self {
        self.unknown_identity = Some(notify);
        self
    }
}

impl Authenticator for SasAuthenticator {
    fn authenticate(&self, credentials: &Credentials<'_>) -> Result<Grant, String> {
        let authenticated = crate::sas::authenticate(
            credentials.client_id,
            credentials.username,
            credentials.password,
            &self.identities,
            &self.hostnames,
            std::time::SystemTime::now(),
        )
        .map_err(|e| {
            if let Some(notify) = &self.unknown_identity
                && matches!(
                    e,
                    crate::sas::AuthError::UnknownIdentity(_)
                        | crate::sas::AuthError::BadSignature(_)
                        | crate::sas::AuthError::NotInScope { .. }
                )
            {
                notify.notify_one();
            }
            format!("{:#}", anyhow::Error::from(e))
        })?;
        let signer = (authenticated.signer != authenticated.identity).then(|| Identity {
            device_id: authenticated.signer.device_id.clone(),
            module_id: authenticated.signer.module_id.clone(),
        });
        Ok(Grant {
            identity: Identity {
                device_id: authenticated.identity.device_id,
                module_id: authenticated.identity.module_id,
            },
            valid_until: Some(authenticated.valid_until),
            model_id: authenticated.username.model_id,
            key: Some(GrantKey {
                slot: authenticated.key,
                fingerprint: authenticated.fingerprint,
                signer,
            }),
        })
    }

    fn registry(
        &self,
    ) -> Option<(
        &crate::identity::IdentityRegistry,
        &crate::identity::Hostnames,
    )> {
        Some((&*self.identities, &self.hostnames))
    }

    fn generation(&self) -> u64 {
        // An unreadable registry counts as a change: the rechecks then keep the connections
        // (judged on the last copy read) and log why.
        self.identities.generation().unwrap_or(u64::MAX)
    }

    fn recheck(&self, grant: &Grant) -> Result<(), String> {
        let identity = &grant.identity;
        let Some(key) = &grant.key else {
            // Not tied to a key: only the identity's existence is checked.
            return match self
                .identities
                .get(&identity.device_id, identity.module_id.as_deref())
            {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err(format!("identity {identity} was removed")),
                Err(error) => keep_on_registry_error(identity, &error),
            };
        };
        // On behalf of: a leaf device must still be registered here (removed at this hub, it
        // leaves the child's scope: the child learns that at its next scope sync); a child's
        // module needs no registration of its own.
        if key.signer.is_some() && identity.module_id.is_none() {
            match self.identities.get(&identity.device_id, None) {
                Ok(Some(_)) => {}
                Ok(None) => return Err(format!("identity {identity} was removed")),
                Err(error) => return keep_on_registry_error(identity, &error),
            }
        }
        // On behalf of: the acting edge hub's key is what must still hold.
        let identity = key.signer.as_ref().unwrap_or(identity);
        let status = self.identities.key_status(
            &identity.device_id,
            identity.module_id.as_deref(),
            &key.fingerprint,
        );
        match status {
            Ok(KeyStatus::Current(_)) => Ok(()),
            Ok(KeyStatus::Retired) => Err(format!(
                "the {} key that authenticated {identity} was rotated",
                key.slot
            )),
            Ok(KeyStatus::Removed) => Err(format!("identity {identity} was removed")),
            Err(error) => keep_on_registry_error(identity, &error),
        }
    }
}

/// A registry that cannot be re-read (replaced by a bad file) does not close live connections:
/// they are judged on the last copy read, and new CONNECTs report the error.
fn keep_on_registry_error(
    identity: &Identity,
    error: &crate::identity::IdentityError,
) -> Result<(), String> {
    tracing::debug!(%identity, error = %error, "identity registry unreadable; connection kept");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::*;
    use crate::identity::{ClientIdentity, Hostnames, IdentityRegistry};

    const HUB: &str = "hub.example.net";

    struct Fixture {
        dir: tempfile::TempDir,
        auth: SasAuthenticator,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let registry = IdentityRegistry::open(dir.path(), "edge").unwrap();
        registry.add_module("filter").unwrap();
        registry.add_device("leaf").unwrap();
        let hostnames = Hostnames {
            iothub: HUB.to_owned(),
            gateway: "gw.local".to_owned(),
        };
        Fixture {
            dir,
            auth: SasAuthenticator::new(registry, hostnames),
        }
    }

    impl Fixture {
        /// `edgehub identity ...` in another process.
        fn cli(&self) -> IdentityRegistry {
            IdentityRegistry::open(self.dir.path(), "edge").unwrap()
        }

        fn connect(&self, id: &ClientIdentity, slot: KeySlot) -> Grant {
            let identity = self
                .cli()
                .get(&id.device_id, id.module_id.as_deref())
                .unwrap()
                .unwrap();
            let audience = match &id.module_id {
                Some(m) => format!("{HUB}/devices/{}/modules/{m}", id.device_id),
                None => format!("{HUB}/devices/{}", id.device_id),
            };
            let expiry = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + 3600;
            let token = crate::sas::sign(&audience, identity.key(slot), expiry);
            let client_id = id.to_string();
            let username = format!("{HUB}/{client_id}/?api-version=2021-04-12");
            self.auth
                .authenticate(&Credentials {
                    client_id: &client_id,
                    username: Some(&username),
                    password: Some(&token),
                })
                .unwrap()
        }
    }

    /// Every way a CONNECT can be wrong, through the authenticator the hub uses: each is
    /// refused with a reason that names the problem and shows no token, signature or key.
    #[test]
    fn the_auth_matrix_refuses_each_case_with_its_reason_and_no_secret() {
        let f = fixture();
        let registry = f.cli();
        let leaf = registry.get("leaf", None).unwrap().unwrap();
        let module = registry.get("edge", Some("filter")).unwrap().unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let leaf_sr = format!("{HUB}/devices/leaf");
        let leaf_user = format!("{HUB}/leaf/?api-version=2021-04-12");
        let sign =
            |sr: &str, key: &crate::identity::SymmetricKey, se: u64| crate::sas::sign(sr, key, se);
        let forged = crate::identity::SymmetricKey::generate().unwrap();
        // Before it is rotated away, the leaf's primary key signs a token kept for later.
        let before_rotation = sign(&leaf_sr, &leaf.primary_key, now + 3600);
        let cases: Vec<(&str, String, String, String, &str)> = vec![
            (
                "forged",
                "leaf".into(),
                leaf_user.clone(),
                sign(&leaf_sr, &forged, now + 3600),
                "signature matches neither key",
            ),
            (
                "expired beyond the skew",
                "leaf".into(),
                leaf_user.clone(),
                sign(&leaf_sr, &leaf.primary_key, now - 301),
                "expired",
            ),
            (
                "wrong audience",
                "leaf".into(),
                leaf_user.clone(),
                sign(
                    &format!("{HUB}/devices/other"),
                    &leaf.primary_key,
                    now + 3600,
                ),
                "does not name client leaf",
            ),
            (
                "another identity's key",
                "leaf".into(),
                leaf_user.clone(),
                sign(&leaf_sr, &module.primary_key, now + 3600),
                "signature matches neither key",
            ),
            (
                "client id other than the username's",
                "edge/filter".into(),
                leaf_user.clone(),
                sign(&leaf_sr, &leaf.primary_key, now + 3600),
                "is not \"leaf\"",
            ),
            (
                "an id IoT Hub would refuse",
                "le af".into(),
                format!("{HUB}/le af/?api-version=1"),
                sign(
                    &format!("{HUB}/devices/le af"),
                    &leaf.primary_key,
                    now + 3600,
                ),
                "contains ' '",
            ),
            (
                "an expiry past the year 9999",
                "leaf".into(),
                leaf_user.clone(),
                sign(&leaf_sr, &leaf.primary_key, u64::MAX),
                "after the year 9999",
            ),
        ];
        let secrets = [
            leaf.primary_key.to_base64(),
            leaf.secondary_key.to_base64(),
            module.primary_key.to_base64(),
            forged.to_base64(),
        ];
        let refuse = |name: &str, client_id: &str, username: &str, token: &str, expected: &str| {
            let reason = f
                .auth
                .authenticate(&Credentials {
                    client_id,
                    username: Some(username),
                    password: Some(token),
                })
                .map(|_| ())
                .expect_err(name);
            assert!(reason.contains(expected), "{name}: {reason}");
            let sig = token
                .split("sig=")
                .nth(1)
                .unwrap()
                .split('&')
                .next()
                .unwrap();
            assert!(!reason.contains(sig), "{name}: {reason}");
            for secret in &secrets {
                assert!(!reason.contains(secret.as_str()), "{name}: {reason}");
            }
        };
        for (name, client_id, username, token, expected) in &cases {
            refuse(name, client_id, username, token, expected);
        }
        // Rotated: the token signed before the rotation no longer connects.
        registry
            .rotate(&ClientIdentity::device("leaf"), KeySlot::Primary)
            .unwrap();
        refuse(
            "rotated",
            "leaf",
            &leaf_user,
            &before_rotation,
            "signature matches neither key",
        );
        // Removed: nor does any token of a removed identity.
        let secondary = sign(&leaf_sr, &leaf.secondary_key, now + 3600);
        registry.remove(&ClientIdentity::device("leaf")).unwrap();
        refuse(
            "removed",
            "leaf",
            &leaf_user,
            &secondary,
            "unknown identity leaf",
        );
    }

    #[test]
    fn a_grant_remembers_which_key_signed_without_showing_it() {
        let f = fixture();
        let leaf = ClientIdentity::device("leaf");
        let grant = f.connect(&leaf, KeySlot::Secondary);
        let key = grant.key.clone().unwrap();
        assert_eq!(key.slot, KeySlot::Secondary);
        let secret = f.cli().get("leaf", None).unwrap().unwrap().secondary_key;
        assert_eq!(key.fingerprint, secret.fingerprint());
        assert!(!format!("{grant:?}").contains(&secret.to_base64()));
        f.auth.recheck(&grant).unwrap();
    }

    #[test]
    fn recheck_fails_once_the_identity_is_removed() {
        let f = fixture();
        let module = ClientIdentity::module("edge", "filter");
        let grant = f.connect(&module, KeySlot::Primary);
        f.auth.recheck(&grant).unwrap();
        f.cli().remove(&module).unwrap();
        let reason = f.auth.recheck(&grant).unwrap_err();
        assert_eq!(reason, "identity edge/filter was removed");
        // Added again, with new keys: the old grant's key is not one of them.
        f.cli().add_module("filter").unwrap();
        assert!(f.auth.recheck(&grant).unwrap_err().contains("rotated"));
    }

    #[test]
    fn an_on_behalf_of_leaf_is_rechecked_on_its_registration_too() {
        let f = fixture();
        let child = f.cli().add_edge_device("child-1", None).unwrap();
        f.cli().add_device_under("leaf-9", "child-1").unwrap();
        let grant = |identity: Identity| Grant {
            identity,
            valid_until: None,
            model_id: None,
            key: Some(GrantKey {
                slot: KeySlot::Primary,
                fingerprint: child.primary_key.fingerprint(),
                signer: Some(Identity {
                    device_id: "child-1".to_owned(),
                    module_id: Some("$edgeHub".to_owned()),
                }),
            }),
        };
        let leaf = grant(Identity {
            device_id: "leaf-9".to_owned(),
            module_id: None,
        });
        let module = grant(Identity {
            device_id: "child-1".to_owned(),
            module_id: Some("sensor".to_owned()),
        });
        f.auth.recheck(&leaf).unwrap();
        f.auth.recheck(&module).unwrap();
        f.cli().remove(&ClientIdentity::device("leaf-9")).unwrap();
        assert_eq!(
            f.auth.recheck(&leaf).unwrap_err(),
            "identity leaf-9 was removed"
        );
        f.auth.recheck(&module).unwrap();
    }

    #[test]
    fn refusals_for_what_upstream_may_know_wake_the_scope_sync() {
        let notify = std::sync::Arc::new(tokio::sync::Notify::new());
        let f = fixture();
        let auth = SasAuthenticator::new(
            std::sync::Arc::new(f.cli()),
            Hostnames {
                iothub: HUB.to_owned(),
                gateway: "gw.local".to_owned(),
            },
        )
        .with_unknown_identity_hint(std::sync::Arc::clone(&notify));
        let woken = || {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable()
        };
        let token = crate::sas::sign(
            &format!("{HUB}/devices/stranger"),
            &crate::identity::SymmetricKey::from_bytes(vec![7; 32]),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + 3600,
        );
        let username = format!("{HUB}/stranger/?api-version=2021-04-12");
        let refused = auth.authenticate(&Credentials {
            client_id: "stranger",
            username: Some(&username),
            password: Some(&token),
        });
        assert!(refused.is_err());
        assert!(woken(), "an unknown identity wakes the sync");
        // A malformed CONNECT does not.
        assert!(
            auth.authenticate(&Credentials {
                client_id: "x",
                username: None,
                password: None,
            })
            .is_err()
        );
        assert!(!woken());
    }

    #[test]
    fn recheck_fails_only_for_the_key_that_was_rotated() {
        let f = fixture();
        let leaf = ClientIdentity::device("leaf");
        let on_primary = f.connect(&leaf, KeySlot::Primary);
        let on_secondary = f.connect(&leaf, KeySlot::Secondary);
        f.cli().rotate(&leaf, KeySlot::Primary).unwrap();
        assert_eq!(
            f.auth.recheck(&on_primary).unwrap_err(),
            "the primary key that authenticated leaf was rotated"
        );
        f.auth.recheck(&on_secondary).unwrap();
        // A new connection with the new primary key is fine again.
        f.auth.recheck(&f.connect(&leaf, KeySlot::Primary)).unwrap();
        f.cli().rotate(&leaf, KeySlot::Secondary).unwrap();
        assert!(f.auth.recheck(&on_secondary).is_err());
    }

    #[test]
    fn an_unreadable_registry_keeps_live_connections() {
        let f = fixture();
        let leaf = ClientIdentity::device("leaf");
        let grant = f.connect(&leaf, KeySlot::Primary);
        std::fs::write(f.dir.path().join("identities.json"), "{not json").unwrap();
        f.auth.recheck(&grant).unwrap();
    }

    #[test]
    fn recheck_is_cheap_when_nothing_changed() {
        let f = fixture();
        let grant = f.connect(&ClientIdentity::device("leaf"), KeySlot::Primary);
        let started = std::time::Instant::now();
        for _ in 0..1000 {
            f.auth.recheck(&grant).unwrap();
        }
        // One stat, one lookup, two hashes each: far below a millisecond (debug build).
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_grant_without_a_key_is_rechecked_on_its_identity_only() {
        let f = fixture();
        let mut grant = f.connect(&ClientIdentity::device("leaf"), KeySlot::Primary);
        grant.key = None;
        f.cli()
            .rotate(&ClientIdentity::device("leaf"), KeySlot::Primary)
            .unwrap();
        f.auth.recheck(&grant).unwrap();
        f.cli().remove(&ClientIdentity::device("leaf")).unwrap();
        assert!(f.auth.recheck(&grant).is_err());
    }
}
