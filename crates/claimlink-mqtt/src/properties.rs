//! MQTT 5 properties (section 2.2.2): one struct for all of them, validated per packet type.

use bytes::{BufMut, Bytes};

use crate::codec::DecodeError;
use crate::codec::wire::{Reader, bytes, put_binary, put_varint};

/// Longest property section accepted, before the packet size limit applies.
const MAX_USER_PROPERTIES: usize = 1024;

/// Properties of one packet. Absent properties are `None` / empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// 0x01 Payload Format Indicator (true: UTF-8).
    pub payload_format_utf8: Option<bool>,
    /// 0x02 Message Expiry Interval, seconds.
    pub message_expiry: Option<u32>,
    /// 0x03 Content Type.
    pub content_type: Option<String>,
    /// 0x08 Response Topic.
    pub response_topic: Option<String>,
    /// 0x09 Correlation Data.
    pub correlation_data: Option<Bytes>,
    /// 0x0B Subscription Identifier(s) (several in a PUBLISH, one in a SUBSCRIBE).
    pub subscription_ids: Vec<u32>,
    /// 0x11 Session Expiry Interval, seconds.
    pub session_expiry: Option<u32>,
    /// 0x12 Assigned Client Identifier.
    pub assigned_client_id: Option<String>,
    /// 0x13 Server Keep Alive, seconds.
    pub server_keep_alive: Option<u16>,
    /// 0x15 Authentication Method.
    pub auth_method: Option<String>,
    /// 0x16 Authentication Data.
    pub auth_data: Option<Bytes>,
    /// 0x17 Request Problem Information.
    pub request_problem_info: Option<bool>,
    /// 0x18 Will Delay Interval, seconds.
    pub will_delay: Option<u32>,
    /// 0x19 Request Response Information.
    pub request_response_info: Option<bool>,
    /// 0x1A Response Information.
    pub response_info: Option<String>,
    /// 0x1C Server Reference.
    pub server_reference: Option<String>,
    /// 0x1F Reason String.
    pub reason_string: Option<String>,
    /// 0x21 Receive Maximum (1..=65535).
    pub receive_maximum: Option<u16>,
    /// 0x22 Topic Alias Maximum.
    pub topic_alias_maximum: Option<u16>,
    /// 0x23 Topic Alias (1..).
    pub topic_alias: Option<u16>,
    /// 0x24 Maximum QoS (0 or 1).
    pub maximum_qos: Option<u8>,
    /// 0x25 Retain Available.
    pub retain_available: Option<bool>,
    /// 0x26 User Properties, in order.
    pub user: Vec<(String, String)>,
    /// 0x27 Maximum Packet Size (1..).
    pub maximum_packet_size: Option<u32>,
    /// 0x28 Wildcard Subscription Available.
    pub wildcard_subscription_available: Option<bool>,
    /// 0x29 Subscription Identifiers Available.
    pub subscription_ids_available: Option<bool>,
    /// 0x2A Shared Subscription Available.
    pub shared_subscription_available: Option<bool>,
}

/// Which packet (or will) a property section belongs to; decides which properties are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Context {
    Connect,
    ConnAck,
    Publish,
    Will,
    Ack,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

fn allowed(id: u8, ctx: Context) -> bool {
    use Context::*;
    match id {
        0x01 | 0x02 | 0x03 | 0x08 | 0x09 => matches!(ctx, Publish | Will),
        0x0B => matches!(ctx, Publish | Subscribe),
        0x11 => matches!(ctx, Connect | ConnAck | Disconnect),
        0x12 | 0x13 | 0x1A | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => ctx == ConnAck,
        0x15 | 0x16 => matches!(ctx, Connect | ConnAck | Auth),
        0x17 | 0x19 => ctx == Connect,
        0x18 => ctx == Will,
        0x1C => matches!(ctx, ConnAck | Disconnect),
        0x1F => matches!(ctx, ConnAck | Ack | SubAck | UnsubAck | Disconnect | Auth),
        0x21 | 0x22 | 0x27 => matches!(ctx, Connect | ConnAck),
        0x23 => ctx == Publish,
        0x26 => true,
        _ => false,
    }
}

fn set<T>(slot: &mut Option<T>, value: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateProperty);
    }
    *slot = Some(value);
    Ok(())
}

fn flag(r: &mut Reader<'_>) -> Result<bool, DecodeError> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::BadPropertyValue),
    }
}

impl Properties {
    /// Whether no property is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    pub(crate) fn decode(r: &mut Reader<'_>, ctx: Context) -> Result<Self, DecodeError> {
        let len = r.varint()? as usize;
        let mut r = Reader::new(r.take(len)?);
        let mut p = Self::default();
        while !r.is_empty() {
            let id = r.varint()?;
            let id = u8::try_from(id).map_err(|_| DecodeError::UnknownProperty)?;
            if !allowed(id, ctx) {
                return Err(
                    if id > 0x2A
                        || matches!(id, 0 | 4..=7 | 0x0A | 0x0C..=0x10 | 0x14 | 0x1B | 0x1D | 0x1E | 0x20)
                    {
                        DecodeError::UnknownProperty
                    } else {
                        DecodeError::PropertyNotAllowed
                    },
                );
            }
            p.decode_one(id, &mut r, ctx)?;
        }
        Ok(p)
    }

    fn decode_one(&mut self, id: u8, r: &mut Reader<'_>, ctx: Context) -> Result<(), DecodeError> {
        let s = |r: &mut Reader<'_>| r.string().map(str::to_owned);
        match id {
            0x01 => set(&mut self.payload_format_utf8, flag(r)?),
            0x02 => set(&mut self.message_expiry, r.u32()?),
            0x03 => set(&mut self.content_type, s(r)?),
            0x08 => set(&mut self.response_topic, s(r)?),
            0x09 => set(&mut self.correlation_data, bytes(r.binary()?)),
            0x0B => {
                let v = r.varint()?;
                if v == 0 || (ctx == Context::Subscribe && !self.subscription_ids.is_empty()) {
                    return Err(DecodeError::BadPropertyValue);
                }
                self.subscription_ids.push(v);
                Ok(())
            }
            0x11 => set(&mut self.session_expiry, r.u32()?),
            0x12 => set(&mut self.assigned_client_id, s(r)?),
            0x13 => set(&mut self.server_keep_alive, r.u16()?),
            0x15 => set(&mut self.auth_method, s(r)?),
            0x16 => set(&mut self.auth_data, bytes(r.binary()?)),
            0x17 => set(&mut self.request_problem_info, flag(r)?),
            0x18 => set(&mut self.will_delay, r.u32()?),
            0x19 => set(&mut self.request_response_info, flag(r)?),
            0x1A => set(&mut self.response_info, s(r)?),
            0x1C => set(&mut self.server_reference, s(r)?),
            0x1F => set(&mut self.reason_string, s(r)?),
            0x21 => set(&mut self.receive_maximum, nonzero16(r)?),
            0x22 => set(&mut self.topic_alias_maximum, r.u16()?),
            0x23 => set(&mut self.topic_alias, nonzero16(r)?),
            0x24 => {
                let q = r.u8()?;
                if q > 1 {
                    return Err(DecodeError::BadPropertyValue);
                }
                set(&mut self.maximum_qos, q)
            }
            0x25 => set(&mut self.retain_available, flag(r)?),
            0x26 => {
                if self.user.len() == MAX_USER_PROPERTIES {
                    return Err(DecodeError::TooManyUserProperties);
                }
                let pair = (s(r)?, s(r)?);
                self.user.push(pair);
                Ok(())
            }
            0x27 => {
                let v = r.u32()?;
                if v == 0 {
                    return Err(DecodeError::BadPropertyValue);
                }
                set(&mut self.maximum_packet_size, v)
            }
            0x28 => set(&mut self.wildcard_subscription_available, flag(r)?),
            0x29 => set(&mut self.subscription_ids_available, flag(r)?),
            0x2A => set(&mut self.shared_subscription_available, flag(r)?),
            _ => Err(DecodeError::UnknownProperty),
        }
    }

    /// Encodes the property length and the properties.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let mut body = Vec::new();
        self.encode_body(&mut body);
        put_varint(out, body.len() as u32);
        out.extend_from_slice(&body);
    }

    fn encode_body(&self, o: &mut Vec<u8>) {
        fn str_p(o: &mut Vec<u8>, id: u8, v: &Option<String>) {
            if let Some(v) = v {
                o.put_u8(id);
                put_binary(o, v.as_bytes());
            }
        }
        fn bin_p(o: &mut Vec<u8>, id: u8, v: &Option<Bytes>) {
            if let Some(v) = v {
                o.put_u8(id);
                put_binary(o, v);
            }
        }
        fn u8_p(o: &mut Vec<u8>, id: u8, v: Option<u8>) {
            if let Some(v) = v {
                o.put_u8(id);
                o.put_u8(v);
            }
        }
        fn u16_p(o: &mut Vec<u8>, id: u8, v: Option<u16>) {
            if let Some(v) = v {
                o.put_u8(id);
                o.put_u16(v);
            }
        }
        fn u32_p(o: &mut Vec<u8>, id: u8, v: Option<u32>) {
            if let Some(v) = v {
                o.put_u8(id);
                o.put_u32(v);
            }
        }
        let b = |v: Option<bool>| v.map(u8::from);
        u8_p(o, 0x01, b(self.payload_format_utf8));
        u32_p(o, 0x02, self.message_expiry);
        str_p(o, 0x03, &self.content_type);
        str_p(o, 0x08, &self.response_topic);
        bin_p(o, 0x09, &self.correlation_data);
        for id in &self.subscription_ids {
            o.put_u8(0x0B);
            put_varint(o, *id);
        }
        u32_p(o, 0x11, self.session_expiry);
        str_p(o, 0x12, &self.assigned_client_id);
        u16_p(o, 0x13, self.server_keep_alive);
        str_p(o, 0x15, &self.auth_method);
        bin_p(o, 0x16, &self.auth_data);
        u8_p(o, 0x17, b(self.request_problem_info));
        u32_p(o, 0x18, self.will_delay);
        u8_p(o, 0x19, b(self.request_response_info));
        str_p(o, 0x1A, &self.response_info);
        str_p(o, 0x1C, &self.server_reference);
        str_p(o, 0x1F, &self.reason_string);
        u16_p(o, 0x21, self.receive_maximum);
        u16_p(o, 0x22, self.topic_alias_maximum);
        u16_p(o, 0x23, self.topic_alias);
        u8_p(o, 0x24, self.maximum_qos);
        u8_p(o, 0x25, b(self.retain_available));
        for (k, v) in &self.user {
            o.put_u8(0x26);
            put_binary(o, k.as_bytes());
            put_binary(o, v.as_bytes());
        }
        u32_p(o, 0x27, self.maximum_packet_size);
        u8_p(o, 0x28, b(self.wildcard_subscription_available));
        u8_p(o, 0x29, b(self.subscription_ids_available));
        u8_p(o, 0x2A, b(self.shared_subscription_available));
    }
}

fn nonzero16(r: &mut Reader<'_>) -> Result<u16, DecodeError> {
    match r.u16()? {
        0 => Err(DecodeError::BadPropertyValue),
        v => Ok(v),
    }
}
