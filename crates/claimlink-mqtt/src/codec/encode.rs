//! Packets to bytes.

use bytes::BufMut;

use super::EncodeError;
use super::wire::{MAX_VARINT, put_varint};
use crate::packet::*;
use crate::properties::Properties;
use crate::reason::ReasonCode;

/// Appends the encoding of `packet` for a connection speaking `version` to `out`.
pub fn encode(packet: &Packet, version: ProtocolVersion, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let v5 = version == ProtocolVersion::V5;
    let mut b = Vec::new();
    let flags = match packet {
        Packet::Connect(c) => connect(c, &mut b)?,
        Packet::ConnAck(c) => {
            b.put_u8(u8::from(c.session_present));
            b.put_u8(if v5 { c.reason as u8 } else { c.reason.v3_connack_code() });
            props(&c.properties, v5, &mut b)?;
            0
        }
        Packet::Publish(p) => publish(p, v5, &mut b)?,
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubComp(a) => ack(a, v5, &mut b).map(|()| 0)?,
        Packet::PubRel(a) => ack(a, v5, &mut b).map(|()| 2)?,
        Packet::Subscribe(s) => {
            b.put_u16(s.packet_id);
            props(&s.properties, v5, &mut b)?;
            for (filter, o) in &s.filters {
                string(filter.as_str().as_bytes(), &mut b)?;
                let mut byte = o.qos as u8;
                if v5 {
                    byte |= u8::from(o.no_local) << 2 | u8::from(o.retain_as_published) << 3;
                    byte |= (o.retain_handling as u8) << 4;
                }
                b.put_u8(byte);
            }
            2
        }
        Packet::SubAck(s) => {
            b.put_u16(s.packet_id);
            props(&s.properties, v5, &mut b)?;
            for r in &s.reasons {
                b.put_u8(if v5 { *r as u8 } else { r.v3_suback_code() });
            }
            0
        }
        Packet::Unsubscribe(u) => {
            b.put_u16(u.packet_id);
            props(&u.properties, v5, &mut b)?;
            for f in &u.filters {
                string(f.as_str().as_bytes(), &mut b)?;
            }
            2
        }
        Packet::UnsubAck(u) => {
            b.put_u16(u.packet_id);
            props(&u.properties, v5, &mut b)?;
            if v5 {
                b.extend(u.reasons.iter().map(|r| *r as u8));
            }
            0
        }
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(d) => {
            if v5 {
                reason_and_props(d.reason, &d.properties, &mut b);
            }
            0
        }
        Packet::Auth(d) => {
            if !v5 {
                return Err(EncodeError::NotInV311);
            }
            reason_and_props(d.reason, &d.properties, &mut b);
            0
        }
    };
    let len = u32::try_from(b.len()).ok().filter(|l| *l <= MAX_VARINT).ok_or(EncodeError::TooLarge)?;
    out.put_u8(packet.type_id() << 4 | flags);
    put_varint(out, len);
    out.extend_from_slice(&b);
    Ok(())
}

fn string(data: &[u8], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let len = u16::try_from(data.len()).map_err(|_| EncodeError::FieldTooLong)?;
    out.put_u16(len);
    out.put_slice(data);
    Ok(())
}

fn props(p: &Properties, v5: bool, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    if v5 {
        p.encode(out);
    }
    Ok(())
}

/// The short forms of MQTT 5: nothing for Success without properties, else the reason and
/// properties.
fn reason_and_props(reason: ReasonCode, p: &Properties, out: &mut Vec<u8>) {
    if reason == ReasonCode::Success && p.is_empty() {
        return;
    }
    out.put_u8(reason as u8);
    if !p.is_empty() {
        p.encode(out);
    }
}

fn ack(a: &Ack, v5: bool, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    out.put_u16(a.packet_id);
    if v5 {
        reason_and_props(a.reason, &a.properties, out);
    }
    Ok(())
}

fn connect(c: &Connect, out: &mut Vec<u8>) -> Result<u8, EncodeError> {
    let v5 = c.version == ProtocolVersion::V5;
    string(b"MQTT", out)?;
    out.put_u8(c.version.level());
    let mut flags = u8::from(c.clean_start) << 1;
    if let Some(w) = &c.will {
        flags |= 0x04 | (w.qos as u8) << 3 | u8::from(w.retain) << 5;
    }
    flags |= u8::from(c.password.is_some()) << 6 | u8::from(c.username.is_some()) << 7;
    out.put_u8(flags);
    out.put_u16(c.keep_alive);
    props(&c.properties, v5, out)?;
    string(c.client_id.as_bytes(), out)?;
    if let Some(w) = &c.will {
        props(&w.properties, v5, out)?;
        string(w.topic.as_bytes(), out)?;
        string(&w.payload, out)?;
    }
    if let Some(u) = &c.username {
        string(u.as_bytes(), out)?;
    }
    if let Some(p) = &c.password {
        string(p, out)?;
    }
    Ok(0)
}

fn publish(p: &Publish, v5: bool, out: &mut Vec<u8>) -> Result<u8, EncodeError> {
    if (p.qos == QoS::AtMostOnce) != p.packet_id.is_none() {
        return Err(EncodeError::PacketIdMismatch);
    }
    string(p.topic.as_bytes(), out)?;
    if let Some(id) = p.packet_id {
        out.put_u16(id);
    }
    props(&p.properties, v5, out)?;
    out.put_slice(&p.payload);
    Ok(u8::from(p.dup) << 3 | (p.qos as u8) << 1 | u8::from(p.retain))
}
