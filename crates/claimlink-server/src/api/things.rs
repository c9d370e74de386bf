//! Things, thing types, thing groups and things' principals.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use claimlink_registry::{Account, PolicyTarget, ThingGroupName, ThingName, ThingTypeName};
use claimlink_service::api::{ApiError, Audited, Body, Object, Page};
use serde::Deserialize;
use serde_json::{Value, json};

use super::policies::policy_target;
use super::{ApiResult, Caller, arn};
use crate::AccountServer;

fn drop_thing_sessions(s: &AccountServer, a: &Account, thing: &ThingName) {
    let dropped = s.drop_where(&a.id, |l| l.thing_name.as_ref() == Some(thing));
    tracing::info!(%thing, dropped, "thing changed: its sessions ended");
}

fn thing_json(a: &Account, t: &claimlink_registry::Thing) -> Value {
    json!({
        "thingName": t.name,
        "thingArn": arn(a, &format!("thing/{}", t.name)),
        "thingTypeName": t.thing_type,
        "attributes": t.attributes,
        "version": t.version,
    })
}

/// An `attributePayload`: attribute names to string values.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct AttributePayload {
    #[serde(default)]
    attributes: Option<BTreeMap<String, String>>,
}

impl AttributePayload {
    fn into_map(this: Option<Object<Self>>) -> BTreeMap<String, String> {
        this.and_then(|p| p.0.attributes).unwrap_or_default()
    }
}

/// `create-thing`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct CreateThing {
    thing_type_name: Option<ThingTypeName>,
    attribute_payload: Option<Object<AttributePayload>>,
}

pub(super) async fn create_thing(
    State(s): State<AccountServer>,
    Caller { account: a, actor }: Caller,
    Path(name): Path<ThingName>,
    Body(b): Body<CreateThing>,
) -> ApiResult {
    let attributes = AttributePayload::into_map(b.attribute_payload);
    let mut tx = Audited::begin(s.store(), Some(&a.id), &actor).await?;
    let t = tx.create_thing(&a.id, &name, b.thing_type_name.as_ref(), &attributes).await?;
    tx.commit("CreateThing", &name).await?;
    Ok(axum::Json(json!({ "thingName": t.name, "thingArn": arn(&a, &format!("thing/{}", t.name)) })))
}

pub(super) async fn describe_thing(
    State(s): State<AccountServer>,
    Caller { account: a, .. }: Caller,
    Path(name): Path<ThingName>,
) -> ApiResult {
    let t = s.store().read().await?.describe_thing(&a.id, &name).await?;
    Ok(axum::Json(thing_json(&a, &t)))
}

pub(super) async fn delete_thing(
    State(s): State<AccountServer>,
    Caller { account: a, actor }: Caller,
    Path(name): Path<ThingName>,
) -> ApiResult {
    let mut tx = Audited::begin(s.store(), Some(&a.id), &actor).await?;
    tx.delete_thing(&a.id, &name).await?;
    tx.commit("DeleteThing", &name).await?;
    drop_thing_sessions(&s, &a, &name);
    Ok(axum::Json(json!({})))
}

pub(super) async fn list_things(
    State(s): State<AccountServer>,
    Caller { account: a, .. }: Caller,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    let page = Page::parse(&q)?;
    let things = s.store().read().await?.things_page(&a.id, page.after.as_deref(), page.fetch()).await?;
    Ok(axum::Json(page.respond("things", things, |t| t.name.to_string(), |t| thing_json(&a, t))))
}

/// `create-thing-type`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct CreateThingType {
    thing_type_properties: Option<Object<ThingTypeProperties>>,
}

/// A thing type's properties.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ThingTypeProperties {
    thing_type_description: Option<String>,
    searchable_attributes: Option<Vec<String>>,
}

pub(super) async fn create_thing_type(
    State(s): State<AccountServer>,
    Caller { account: a, actor }: Caller,
    Path(name): Path<ThingTypeName>,
    Body(b): Body<CreateThingType>,
) -> ApiResult {
    let p = b.thing_type_properties.unwrap_or_default().0;
    let (description, searchable) = (p.thing_type_description, p.searchable_attributes.unwrap_or_default());
    let mut tx = Audited::begin(s.store(), Some(&a.id), &actor).await?;
    tx.create_thing_type(&a.id, &name, description.as_deref(), &searchable).await?;
    tx.commit("CreateThingType", &name).await?;
    Ok(axum::Json(json!({ "thingTypeName": name, "thingTypeArn": arn(&a, &format!("thingtype/{name}")) })))
}

/// `create-thing-group`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct CreateThingGroup {
    parent_group_name: Option<ThingGroupName>,
    thing_group_properties: Option<Object<ThingGroupProperties>>,
}

/// A thing group's properties.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ThingGroupProperties {
    attribute_payload: Option<Object<AttributePayload>>,
}

pub(super) async fn create_thing_group(
    State(s): State<AccountServer>,
    Caller { account: a, actor }: Caller,
    Path(name): Path<ThingGroupName>,
    Body(b): Body<CreateThingGroup>,
) -> ApiResult {
    let attributes = AttributePayload::into_map(b.thing_group_properties.and_then(|p| p.0.attribute_payload));
    let mut tx = Audited::begin(s.store(), Some(&a.id), &actor).await?;
    tx.create_thing_group(&a.id, &name, b.parent_group_name.as_ref(), &attributes).await?;
    tx.commit("CreateThingGroup", &name).await?;
    Ok(axum::Json(json!({ "thingGroupName": name, "thingGroupArn": arn(&a, &format!("thinggroup/{name}")) })))
}

/// `add-thing-to-thing-group`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct AddThingToGroup {
    thing_group_name: ThingGroupName,
    thing_name: ThingName,
}

pub(super) async fn add_thing_to_group(
    State(s): State<AccountServer>,
    Caller { account: a, actor }: Caller,
    Body(b): Body<AddThingToGroup>,
) -> ApiResult {
    let (group, thing) = (&b.thing_group_name, &b.thing_name);
    let mut tx = Audited::begin(s.store(), Some(&a.id), &actor).await?;
    tx.add_thing_to_group(&a.id, group, thing).await?;
    tx.commit("AddThingToThingGroup", thing).await?;
    drop_thing_sessions(&s, &a, thing);
    Ok(axum::Json(json!({})))
}

/// `attach-thing-principal` (AWS sends the principal in `x-amzn-iot-principal`; either works).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct AttachThingPrincipal {
    principal: Option<String>,
}

pub(super) async fn attach_thing_principal(
    State(s): State<AccountServer>,
    Caller { account: a, actor }: Caller,
    Path(name): Path<ThingName>,
    h: HeaderMap,
    Body(b): Body<AttachThingPrincipal>,
) -> ApiResult {
    let principal = match h.get("x-amzn-iot-principal").and_then(|v| v.to_str().ok()) {
        Some(p) => p.to_owned(),
        None => b.principal.ok_or_else(|| ApiError::bad("principal is required"))?,
    };
    let PolicyTarget::Certificate(cert) = policy_target(&a, &principal)? else {
        return Err(ApiError::bad("the principal must be a certificate ARN"));
    };
    let mut tx = Audited::begin(s.store(), Some(&a.id), &actor).await?;
    tx.attach_thing_principal(&a.id, &name, &cert).await?;
    tx.commit("AttachThingPrincipal", &name).await?;
    s.drop_sessions(&a.id, &cert);
    Ok(axum::Json(json!({})))
}
