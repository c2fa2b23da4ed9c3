//! Resolves secret references at send time from the process environment or
//! from files (e.g. a mounted Kubernetes Secret). Values never leave this
//! module except into request headers and signatures.

use herald_core::{SecretError, SecretRef, SecretSource, SecretValue};

/// Reads `env:NAME` from the environment and `file:/path` from disk, on every
/// call, so a rotated secret file is picked up without a restart.
#[derive(Debug, Default, Clone, Copy)]
pub struct EnvAndFileSecrets;

impl SecretSource for EnvAndFileSecrets {
    fn resolve(&self, reference: &SecretRef) -> Result<SecretValue, SecretError> {
        match reference {
            SecretRef::Env(name) => {
                std::env::var(name)
                    .map(SecretValue::new)
                    .map_err(|_| SecretError::NotFound {
                        reference: reference.clone(),
                    })
            }
            SecretRef::File(path) => match std::fs::read_to_string(path) {
                // Files written by editors and `echo` end in a newline.
                Ok(text) => Ok(SecretValue::new(text.trim_end_matches(['\n', '\r']))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(SecretError::NotFound {
                    reference: reference.clone(),
                }),
                Err(e) => Err(SecretError::Unreadable {
                    reference: reference.clone(),
                    reason: e.to_string(),
                }),
            },
        }
    }
}
