//! Bytes to packets.

use bytes::Bytes;

use super::DecodeError;
use super::wire::{Reader, bytes, decode_varint};
use crate::packet::*;
use crate::properties::{Context, Properties};
use crate::reason::ReasonCode;
use crate::topic::TopicFilter;

/// Decodes the first packet in `buf`.
///
/// `version` is the connection's protocol version (ignored for CONNECT, which carries its own).
/// `max_packet_size` bounds the whole packet, fixed header included. Returns `Ok(None)` when
/// `buf` does not yet hold a whole packet, else the packet and the bytes it used.
pub fn decode(
    buf: &[u8],
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<(Packet, usize)>, DecodeError> {
    let Some(&first) = buf.first() else { return Ok(None) };
    let Some((remaining, len_bytes)) = decode_varint(&buf[1..])? else { return Ok(None) };
    let size = 1 + len_bytes + remaining as usize;
    if size > max_packet_size {
        return Err(DecodeError::PacketTooLarge { size, max: max_packet_size });
    }
    if buf.len() < size {
        return Ok(None);
    }
    let (kind, flags) = (first >> 4, first & 0x0f);
    let mut r = Reader::new(&buf[1 + len_bytes..size]);
    let packet = body(kind, flags, &mut r, version)?;
    if !r.is_empty() {
        return Err(DecodeError::TrailingBytes);
    }
    Ok(Some((packet, size)))
}

fn expect_flags(kind: u8, flags: u8, want: u8) -> Result<(), DecodeError> {
    if flags == want { Ok(()) } else { Err(DecodeError::BadFlags(kind)) }
}

fn body(kind: u8, flags: u8, r: &mut Reader<'_>, v: ProtocolVersion) -> Result<Packet, DecodeError> {
    let v5 = v == ProtocolVersion::V5;
    match kind {
        1 => {
            expect_flags(kind, flags, 0)?;
            connect(r).map(|c| Packet::Connect(Box::new(c)))
        }
        2 => {
            expect_flags(kind, flags, 0)?;
            connack(r, v5).map(Packet::ConnAck)
        }
        3 => publish(flags, r, v5).map(Packet::Publish),
        4 => expect_flags(kind, flags, 0).and_then(|()| ack(r, v5)).map(Packet::PubAck),
        5 => expect_flags(kind, flags, 0).and_then(|()| ack(r, v5)).map(Packet::PubRec),
        6 => expect_flags(kind, flags, 2).and_then(|()| ack(r, v5)).map(Packet::PubRel),
        7 => expect_flags(kind, flags, 0).and_then(|()| ack(r, v5)).map(Packet::PubComp),
        8 => expect_flags(kind, flags, 2).and_then(|()| subscribe(r, v5)).map(Packet::Subscribe),
        9 => expect_flags(kind, flags, 0).and_then(|()| suback(r, v5)).map(Packet::SubAck),
        10 => expect_flags(kind, flags, 2).and_then(|()| unsubscribe(r, v5)).map(Packet::Unsubscribe),
        11 => expect_flags(kind, flags, 0).and_then(|()| unsuback(r, v5)).map(Packet::UnsubAck),
        12 => expect_flags(kind, flags, 0).map(|()| Packet::PingReq),
        13 => expect_flags(kind, flags, 0).map(|()| Packet::PingResp),
        14 => {
            expect_flags(kind, flags, 0)?;
            disconnect(r, v5, Context::Disconnect).map(Packet::Disconnect)
        }
        15 if v5 => {
            expect_flags(kind, flags, 0)?;
            disconnect(r, v5, Context::Auth).map(Packet::Auth)
        }
        other => Err(DecodeError::ReservedPacketType(other)),
    }
}

fn packet_id(r: &mut Reader<'_>) -> Result<u16, DecodeError> {
    match r.u16()? {
        0 => Err(DecodeError::ZeroPacketId),
        id => Ok(id),
    }
}

fn props(r: &mut Reader<'_>, v5: bool, ctx: Context) -> Result<Properties, DecodeError> {
    if v5 { Properties::decode(r, ctx) } else { Ok(Properties::default()) }
}

fn reason(byte: u8, valid: &[ReasonCode]) -> Result<ReasonCode, DecodeError> {
    ReasonCode::from_u8(byte).filter(|c| valid.contains(c)).ok_or(DecodeError::BadReasonCode(byte))
}

fn connect(r: &mut Reader<'_>) -> Result<Connect, DecodeError> {
    if r.string().map_err(|_| DecodeError::BadProtocolName)? != "MQTT" {
        return Err(DecodeError::BadProtocolName);
    }
    let version = match r.u8()? {
        4 => ProtocolVersion::V311,
        5 => ProtocolVersion::V5,
        other => return Err(DecodeError::UnsupportedProtocolVersion(other)),
    };
    let v5 = version == ProtocolVersion::V5;
    let flags = r.u8()?;
    let (has_user, has_pass, will_retain) = (flags & 0x80 != 0, flags & 0x40 != 0, flags & 0x20 != 0);
    let will_qos = QoS::from_bits((flags >> 3) & 3).ok_or(DecodeError::BadConnectFlags)?;
    let (has_will, clean_start) = (flags & 0x04 != 0, flags & 0x02 != 0);
    let will_flags_without_will = !has_will && (will_retain || will_qos != QoS::AtMostOnce);
    if flags & 1 != 0 || will_flags_without_will || (!v5 && has_pass && !has_user) {
        return Err(DecodeError::BadConnectFlags);
    }
    let keep_alive = r.u16()?;
    let properties = props(r, v5, Context::Connect)?;
    let client_id = r.string()?.to_owned();
    let will = if has_will {
        let properties = props(r, v5, Context::Will)?;
        let topic = r.string()?.to_owned();
        let payload = bytes(r.binary()?);
        Some(Will { topic, payload, qos: will_qos, retain: will_retain, properties })
    } else {
        None
    };
    let username = if has_user { Some(r.string()?.to_owned()) } else { None };
    let password = if has_pass { Some(bytes(r.binary()?)) } else { None };
    Ok(Connect { version, clean_start, keep_alive, client_id, will, username, password, properties })
}

fn connack(r: &mut Reader<'_>, v5: bool) -> Result<ConnAck, DecodeError> {
    let ack_flags = r.u8()?;
    if ack_flags & 0xfe != 0 {
        return Err(DecodeError::BadConnectFlags);
    }
    let code = r.u8()?;
    let reason = if v5 {
        ReasonCode::from_u8(code)
            .filter(|c| *c == ReasonCode::Success || c.is_error())
            .ok_or(DecodeError::BadReasonCode(code))?
    } else {
        match code {
            0 => ReasonCode::Success,
            1 => ReasonCode::UnsupportedProtocolVersion,
            2 => ReasonCode::ClientIdentifierNotValid,
            3 => ReasonCode::ServerUnavailable,
            4 => ReasonCode::BadUserNameOrPassword,
            5 => ReasonCode::NotAuthorized,
            other => return Err(DecodeError::BadReasonCode(other)),
        }
    };
    let properties = props(r, v5, Context::ConnAck)?;
    Ok(ConnAck { session_present: ack_flags & 1 != 0, reason, properties })
}

fn publish(flags: u8, r: &mut Reader<'_>, v5: bool) -> Result<Publish, DecodeError> {
    let qos = QoS::from_bits((flags >> 1) & 3).ok_or(DecodeError::InvalidQoS)?;
    let dup = flags & 0x08 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::BadFlags(3));
    }
    let topic = r.string()?.to_owned();
    if topic.contains(['+', '#']) {
        return Err(DecodeError::BadTopicName(crate::topic::TopicError::WildcardInName));
    }
    let packet_id = if qos == QoS::AtMostOnce { None } else { Some(packet_id(r)?) };
    let properties = props(r, v5, Context::Publish)?;
    if topic.is_empty() && properties.topic_alias.is_none() {
        return Err(DecodeError::BadTopicName(crate::topic::TopicError::Empty));
    }
    let payload = Bytes::copy_from_slice(r.rest());
    Ok(Publish { dup, qos, retain: flags & 1 != 0, topic, packet_id, properties, payload })
}

const ACK_REASONS: [ReasonCode; 9] = [
    ReasonCode::Success,
    ReasonCode::NoMatchingSubscribers,
    ReasonCode::UnspecifiedError,
    ReasonCode::ImplementationSpecificError,
    ReasonCode::NotAuthorized,
    ReasonCode::TopicNameInvalid,
    ReasonCode::PacketIdentifierInUse,
    ReasonCode::QuotaExceeded,
    ReasonCode::PayloadFormatInvalid,
];

fn ack(r: &mut Reader<'_>, v5: bool) -> Result<Ack, DecodeError> {
    let packet_id = packet_id(r)?;
    if !v5 || r.is_empty() {
        return Ok(Ack::new(packet_id));
    }
    let code = r.u8()?;
    // PUBREL/PUBCOMP may carry 0x92; the other codes belong to PUBACK/PUBREC.
    let reason =
        reason(code, &ACK_REASONS).or_else(|_| reason(code, &[ReasonCode::PacketIdentifierNotFound]))?;
    let properties = if r.is_empty() { Properties::default() } else { Properties::decode(r, Context::Ack)? };
    Ok(Ack { packet_id, reason, properties })
}

fn subscribe(r: &mut Reader<'_>, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = props(r, v5, Context::Subscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = TopicFilter::new(r.string()?).map_err(DecodeError::BadTopicFilter)?;
        let o = r.u8()?;
        let reserved = if v5 { 0xc0 } else { 0xfc };
        let qos = QoS::from_bits(o & 3).ok_or(DecodeError::BadSubscriptionOptions)?;
        let retain_handling = match (o >> 4) & 3 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(DecodeError::BadSubscriptionOptions),
        };
        if o & reserved != 0 {
            return Err(DecodeError::BadSubscriptionOptions);
        }
        let options = SubscriptionOptions {
            qos,
            no_local: o & 4 != 0,
            retain_as_published: o & 8 != 0,
            retain_handling,
        };
        filters.push((filter, options));
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters);
    }
    Ok(Subscribe { packet_id, properties, filters })
}

const SUBACK_REASONS: [ReasonCode; 12] = [
    ReasonCode::Success,
    ReasonCode::GrantedQoS1,
    ReasonCode::GrantedQoS2,
    ReasonCode::UnspecifiedError,
    ReasonCode::ImplementationSpecificError,
    ReasonCode::NotAuthorized,
    ReasonCode::TopicFilterInvalid,
    ReasonCode::PacketIdentifierInUse,
    ReasonCode::QuotaExceeded,
    ReasonCode::SharedSubscriptionsNotSupported,
    ReasonCode::SubscriptionIdentifiersNotSupported,
    ReasonCode::WildcardSubscriptionsNotSupported,
];

fn suback(r: &mut Reader<'_>, v5: bool) -> Result<SubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = props(r, v5, Context::SubAck)?;
    let mut reasons = Vec::new();
    while !r.is_empty() {
        let code = r.u8()?;
        reasons.push(if v5 {
            reason(code, &SUBACK_REASONS)?
        } else {
            match code {
                0..=2 => reason(code, &SUBACK_REASONS)?,
                0x80 => ReasonCode::UnspecifiedError,
                other => return Err(DecodeError::BadReasonCode(other)),
            }
        });
    }
    if reasons.is_empty() {
        return Err(DecodeError::NoTopicFilters);
    }
    Ok(SubAck { packet_id, properties, reasons })
}

fn unsubscribe(r: &mut Reader<'_>, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = props(r, v5, Context::Unsubscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(TopicFilter::new(r.string()?).map_err(DecodeError::BadTopicFilter)?);
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters);
    }
    Ok(Unsubscribe { packet_id, properties, filters })
}

fn unsuback(r: &mut Reader<'_>, v5: bool) -> Result<UnsubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = props(r, v5, Context::UnsubAck)?;
    let valid = [
        ReasonCode::Success,
        ReasonCode::NoSubscriptionExisted,
        ReasonCode::UnspecifiedError,
        ReasonCode::ImplementationSpecificError,
        ReasonCode::NotAuthorized,
        ReasonCode::TopicFilterInvalid,
        ReasonCode::PacketIdentifierInUse,
    ];
    let mut reasons = Vec::new();
    while v5 && !r.is_empty() {
        reasons.push(reason(r.u8()?, &valid)?);
    }
    Ok(UnsubAck { packet_id, properties, reasons })
}

fn disconnect(r: &mut Reader<'_>, v5: bool, ctx: Context) -> Result<Disconnect, DecodeError> {
    if !v5 || r.is_empty() {
        return Ok(Disconnect { reason: ReasonCode::Success, properties: Properties::default() });
    }
    let code = r.u8()?;
    let reason = match ctx {
        Context::Auth => reason(
            code,
            &[ReasonCode::Success, ReasonCode::ContinueAuthentication, ReasonCode::ReAuthenticate],
        )?,
        _ => ReasonCode::from_u8(code)
            .filter(|c| c.is_error() || matches!(c, ReasonCode::Success | ReasonCode::DisconnectWithWill))
            .ok_or(DecodeError::BadReasonCode(code))?,
    };
    let properties = if r.is_empty() { Properties::default() } else { Properties::decode(r, ctx)? };
    Ok(Disconnect { reason, properties })
}
