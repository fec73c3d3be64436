//! Device state blobs: the runtime's 12-byte head (magic, little-endian
//! `u32` version, see `virtkit_core::runtime::state`) followed by a
//! postcard encoding of a versioned serde struct. postcard's format is
//! stable since 1.0 and compact, so a blob written by one release reads
//! in the next; a struct that changes becomes a new version.

use serde::de::DeserializeOwned;
use serde::Serialize;
use virtkit_core::runtime::state::read_state_head;
use virtkit_core::runtime::StateError;

/// Encode `value` as a blob of `version` under `magic`.
pub fn encode<T: Serialize>(
    magic: [u8; 8],
    version: u32,
    value: &T,
) -> Result<Vec<u8>, StateError> {
    let mut out = magic.to_vec();
    out.extend_from_slice(&version.to_le_bytes());
    postcard::to_extend(value, out)
        .map_err(|e| StateError::Corrupt(format!("encoding device state: {e}")))
}

/// Decode a blob written by [`encode`] with a version in `readable`;
/// returns the version with the value. Bytes left over are an error.
pub fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    magic: [u8; 8],
    readable: std::ops::RangeInclusive<u32>,
) -> Result<(u32, T), StateError> {
    let (version, body) = read_state_head(bytes, magic, readable)?;
    let (value, rest) = postcard::take_from_bytes(body)
        .map_err(|e| StateError::Corrupt(format!("device state: {e}")))?;
    if !rest.is_empty() {
        return Err(StateError::Corrupt(format!(
            "{} bytes after the device state",
            rest.len()
        )));
    }
    Ok((version, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Sample {
        a: u16,
        b: Vec<u8>,
    }

    #[test]
    fn round_trip_and_rejections() {
        let s = Sample {
            a: 7,
            b: vec![1, 2],
        };
        let blob = encode(*b"SAMPLE\0\0", 1, &s).unwrap();
        assert_eq!(
            decode::<Sample>(&blob, *b"SAMPLE\0\0", 1..=1).unwrap(),
            (1, s)
        );
        assert!(matches!(
            decode::<Sample>(&blob, *b"OTHER\0\0\0", 1..=1),
            Err(StateError::Magic(_))
        ));
        assert!(matches!(
            decode::<Sample>(&blob, *b"SAMPLE\0\0", 2..=2),
            Err(StateError::Version(1))
        ));
        assert!(decode::<Sample>(&blob[..blob.len() - 1], *b"SAMPLE\0\0", 1..=1).is_err());
        let mut long = blob.clone();
        long.push(0);
        assert!(decode::<Sample>(&long, *b"SAMPLE\0\0", 1..=1).is_err());
    }
}
