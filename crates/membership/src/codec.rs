//! Conversion between the state machine's types and the protobuf wire types.
//!
//! Decoding never panics: any byte sequence yields a packet or a [`DecodeError`].

use std::net::SocketAddr;

use proto::Message;
use proto::gossip as pb;

use crate::member::{Meta, Status};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Why an incoming packet was dropped. Every variant is counted in [`crate::Stats`];
/// no state changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not a protobuf `Packet`.
    #[error("malformed packet: {0}")]
    Malformed(String),
    /// A packet from a peer that speaks another protocol version.
    #[error("peer speaks gossip protocol version {theirs}, this node speaks {ours}")]
    Version { theirs: u32, ours: u32 },
    /// Larger than the configured packet size limit.
    #[error("packet of {len} bytes exceeds the limit of {limit}")]
    TooLarge { len: usize, limit: usize },
    /// A required field is missing or a field has an invalid value.
    #[error("invalid field {0}")]
    Invalid(&'static str),
}

/// Decodes a packet and checks its version.
pub fn decode_packet(bytes: &[u8], limit: usize) -> Result<pb::Packet, DecodeError> {
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    let packet = pb::Packet::decode(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if packet.version != PROTOCOL_VERSION {
        return Err(DecodeError::Version {
            theirs: packet.version,
            ours: PROTOCOL_VERSION,
        });
    }
    Ok(packet)
}

pub(crate) fn encode(packet: &pb::Packet) -> Vec<u8> {
    packet.encode_to_vec()
}

pub(crate) fn node_ref(name: &str, addr: SocketAddr) -> pb::NodeRef {
    pb::NodeRef {
        name: name.to_owned(),
        addr: addr.to_string(),
    }
}

pub(crate) fn parse_node(node: Option<&pb::NodeRef>) -> Result<(String, SocketAddr), DecodeError> {
    let node = node.ok_or(DecodeError::Invalid("node"))?;
    if node.name.is_empty() {
        return Err(DecodeError::Invalid("node.name"));
    }
    let addr = node.addr.parse().map_err(|_| DecodeError::Invalid("node.addr"))?;
    Ok((node.name.clone(), addr))
}

pub(crate) fn meta_to_pb(meta: &Meta) -> pb::Meta {
    pb::Meta {
        roles: meta.roles.clone(),
        services: meta.services.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        capacity: meta.capacity,
        tags: meta.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

pub(crate) fn meta_from_pb(meta: Option<pb::Meta>) -> Meta {
    let Some(meta) = meta else { return Meta::default() };
    Meta {
        roles: meta.roles,
        services: meta.services.into_iter().collect(),
        capacity: meta.capacity,
        tags: meta.tags.into_iter().collect(),
    }
}

pub(crate) fn meta_encoded_len(meta: &Meta) -> usize {
    meta_to_pb(meta).encoded_len()
}

pub(crate) fn status_to_pb(status: Status) -> pb::Status {
    match status {
        Status::Alive => pb::Status::Alive,
        Status::Suspect => pb::Status::Suspect,
        Status::Dead => pb::Status::Dead,
        Status::Left => pb::Status::Left,
    }
}

pub(crate) fn status_from_pb(status: i32) -> Result<Status, DecodeError> {
    match pb::Status::try_from(status) {
        Ok(pb::Status::Alive) => Ok(Status::Alive),
        Ok(pb::Status::Suspect) => Ok(Status::Suspect),
        Ok(pb::Status::Dead) => Ok(Status::Dead),
        Ok(pb::Status::Left) => Ok(Status::Left),
        _ => Err(DecodeError::Invalid("status")),
    }
}
