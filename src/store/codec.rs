//! The JSON codec every backend stores records with, so a record reads the same whichever backend wrote it.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::store::StoreError;

/// Serializes a record.
pub fn to_json<T: Serialize>(record: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(record).map_err(|e| StoreError::Corrupt(format!("cannot encode record: {e}")))
}

/// Deserializes a stored record; a record that does not parse is corrupt.
pub fn from_json<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}
