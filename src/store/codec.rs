//! The JSON codec every backend stores records with, so a record reads the same whichever backend wrote it.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::store::StoreError;

/// Serializes a record. The buffer starts at the size of a typical notification or delivery record, so
/// encoding one does not grow it three times on the way (serde_json starts at 128 bytes).
pub fn to_json<T: Serialize>(record: &T) -> Result<Vec<u8>, StoreError> {
    let mut json = Vec::with_capacity(512);
    serde_json::to_writer(&mut json, record).map_err(|e| StoreError::Corrupt(format!("cannot encode record: {e}")))?;
    Ok(json)
}

/// Deserializes a stored record; a record that does not parse is corrupt.
pub fn from_json<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}
