"""Compatibility scenarios run with the official Azure IoT Python SDK, unmodified.

Usage: python scenarios.py SCENARIO
Environment: CS_A and CS_B (module connection strings), CA_FILE (the hub's CA, PEM),
SAS_KEY_A (module A's key, for the expired-token scenario), GATEWAY (host name),
EDGEHUB_BIN and EDGEHUB_CONFIG (the edgehub binary and the configuration of the hub the operator
uses, for the scenarios that set desired properties or invoke methods as the operator), and
OPERATOR_TARGET (optional: how that hub names module B, e.g. child-1/filter when the operator
works at the parent of B's hub; default: B's module id).
Exits 0 when the scenario holds; prints what went wrong otherwise.
"""

import base64
import hashlib
import hmac
import json
import os
import queue
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse

from azure.iot.device import IoTHubModuleClient, Message
from azure.iot.device.exceptions import CredentialError

CA = open(os.environ["CA_FILE"]).read()


def client(connection_string):
    return IoTHubModuleClient.create_from_connection_string(
        connection_string, server_verification_cert=CA, connection_retry=False
    )


def fields(connection_string):
    return dict(part.split("=", 1) for part in connection_string.split(";"))


def module_to_module():
    """A's output out1 reaches B's input in1 with body, properties, content type and encoding;
    1,000 messages arrive in order; a message to an output without a route is accepted."""
    received = queue.Queue()
    b = client(os.environ["CS_B"])
    b.on_message_received = received.put
    b.connect()
    a = client(os.environ["CS_A"])
    a.connect()

    body = json.dumps({"machine": {"temperature": 31.5}})
    message = Message(body, message_id="mid-1", content_encoding="utf-8", content_type="application/json")
    message.correlation_id = "cid-1"
    message.custom_properties["color"] = "red/blue &x=1"
    message.custom_properties["n"] = 5
    a.send_message_to_output(message, "out1")
    got = received.get(timeout=30)
    assert got.input_name == "in1", got.input_name
    assert got.data == body.encode(), got.data
    assert got.message_id == "mid-1", got.message_id
    assert got.correlation_id == "cid-1", got.correlation_id
    assert got.content_type == "application/json", got.content_type
    assert got.content_encoding == "utf-8", got.content_encoding
    assert got.custom_properties["color"] == "red/blue &x=1", got.custom_properties
    assert got.custom_properties["n"] == "5", got.custom_properties
    assert got.custom_properties["$.cmid"] == fields(os.environ["CS_A"])["ModuleId"], got.custom_properties
    assert got.custom_properties["$.cdid"] == fields(os.environ["CS_A"])["DeviceId"], got.custom_properties

    count = 1000
    sender = threading.Thread(
        target=lambda: [a.send_message_to_output(Message(str(i)), "out1") for i in range(count)]
    )
    sender.start()
    for i in range(count):
        got = received.get(timeout=60)
        assert got.data.decode() == str(i), f"message {i} arrived as {got.data!r}"
    sender.join()

    # Accepted (the call returns once PUBACKed) and dropped: no route for this output.
    a.send_message_to_output(Message("nowhere"), "unrouted")
    try:
        extra = received.get(timeout=2)
        raise AssertionError(f"an unrouted message was delivered: {extra.data!r}")
    except queue.Empty:
        pass
    a.shutdown()
    b.shutdown()


def twin():
    """get_twin answers with desired and reported versions; a reported patch is stored and read
    back (responses come even before the SDK subscribes to them)."""
    a = client(os.environ["CS_A"])
    a.connect()
    first = a.get_twin()
    assert "$version" in first["desired"], first
    a.patch_twin_reported_properties({"firmware": "1.2.3", "status": {"ok": True}})
    a.patch_twin_reported_properties({"status": {"load": 5}})
    second = a.get_twin()
    reported = second["reported"]
    assert reported["firmware"] == "1.2.3", reported
    assert reported["status"] == {"ok": True, "load": 5}, reported
    assert reported["$version"] == first["reported"]["$version"] + 2, (first, second)
    a.shutdown()


def methods():
    """invoke_method from module A (an edge-environment client, as the SDK requires) reaches
    module B over HTTPS on port 443 and returns B's answer; a module that is not connected
    gives an error (404)."""
    from azure.iot.device import MethodResponse
    from azure.iot.device.exceptions import ClientError

    b = client(os.environ["CS_B"])

    def answer(request):
        b.send_method_response(MethodResponse.create_from_method_request(request, 201, {"echo": request.payload}))

    b.on_method_request_received = answer
    b.connect()
    os.environ["EdgeHubConnectionString"] = os.environ["CS_A"]
    os.environ["EdgeModuleCACertificateFile"] = os.environ["CA_FILE"]
    a = IoTHubModuleClient.create_from_edge_environment()
    target = fields(os.environ["CS_B"])
    params = {"methodName": "echo", "payload": {"hello": "world"}, "responseTimeoutInSeconds": 5, "connectTimeoutInSeconds": 2}
    result = a.invoke_method(params, target["DeviceId"], module_id=target["ModuleId"])
    assert result == {"status": 201, "payload": {"echo": {"hello": "world"}}}, result
    b.shutdown()
    params["connectTimeoutInSeconds"] = 0
    try:
        a.invoke_method(params, target["DeviceId"], module_id=target["ModuleId"])
        raise AssertionError("a disconnected module answered")
    except ClientError as e:
        # The SDK wraps the HTTP error: ServiceError("HTTP operation returned: 404 ...").
        assert "404" in str(e.__cause__), repr(e.__cause__)
    a.shutdown()


def edgehub(command, subcommand, *args):
    """Runs `edgehub COMMAND SUBCOMMAND --config EDGEHUB_CONFIG ARGS...`; its output as JSON."""
    out = subprocess.run(
        [os.environ["EDGEHUB_BIN"], command, subcommand, "--config", os.environ["EDGEHUB_CONFIG"], *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, f"edgehub {command} {subcommand} {args}: exit {out.returncode}: {out.stderr}"
    return json.loads(out.stdout)


def operator_target():
    """How the operator's hub names module B."""
    return os.environ.get("OPERATOR_TARGET") or fields(os.environ["CS_B"])["ModuleId"]


def desired():
    """A desired patch set with `edgehub twin set-desired` arrives at the connected module, with
    its $version, and get_twin shows it."""
    patches = queue.Queue()
    b = client(os.environ["CS_B"])
    b.on_twin_desired_properties_patch_received = patches.put
    b.connect()
    module = operator_target()
    before = b.get_twin()["desired"]["$version"]
    # The SDK subscribes to desired patches in the background once the handler is set: a
    # patch set before that subscription lands is not pushed (the module reads it with its
    # next get_twin), so set a new one until one arrives (three tries). The SDK also hands
    # the handler the whole desired document it reads when it subscribes: skip those.
    sent = {}
    got = None
    for attempt in range(1, 4):
        patch = {"threshold": attempt, "unit": {"celsius": True}}
        version = edgehub("twin", "set-desired", module, json.dumps(patch))["$version"]
        sent[version] = patch
        deadline = time.monotonic() + 5
        while got is None and time.monotonic() < deadline:
            try:
                item = patches.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item.get("$version", 0) >= min(sent):
                got = item
        if got is not None:
            break
    assert got is not None, f"no desired patch arrived; set {sent}"
    version = got.pop("$version", None)
    assert version in sent, f"patch {got} arrived with $version {version}; set {sent}"
    assert got == sent[version], f"patch {got} with $version {version}; set {sent[version]}"
    assert version > before, (before, version)
    latest = b.get_twin()["desired"]
    assert latest["$version"] == max(sent), latest
    assert latest["threshold"] == sent[max(sent)]["threshold"], latest
    b.shutdown()


def offline_desired():
    """Two desired patches set while the module is disconnected: when it comes back, get_twin
    shows the state after both, with the latest $version."""
    module = operator_target()
    b = client(os.environ["CS_B"])
    b.connect()
    b.get_twin()
    b.shutdown()
    first = edgehub("twin", "set-desired", module, json.dumps({"offline": 1, "kept": "yes"}))["$version"]
    second = edgehub("twin", "set-desired", module, json.dumps({"offline": 2}))["$version"]
    assert second == first + 1, (first, second)
    b = client(os.environ["CS_B"])
    b.connect()
    desired = b.get_twin()["desired"]
    assert desired["offline"] == 2, desired
    assert desired["kept"] == "yes", desired
    assert desired["$version"] == second, desired
    b.shutdown()


def desired_on_connect():
    """Connecting, module B reads its twin: the desired property EXPECT_KEY is EXPECT_VALUE (a
    JSON value), set while B's hub was offline."""
    b = client(os.environ["CS_B"])
    b.connect()
    desired = b.get_twin()["desired"]
    expected = json.loads(os.environ["EXPECT_VALUE"])
    assert desired.get(os.environ["EXPECT_KEY"]) == expected, desired
    b.shutdown()


def operator_method():
    """`edgehub method invoke` at the operator's hub reaches module B (through every hub in
    between) and prints its answer."""
    from azure.iot.device import MethodResponse

    b = client(os.environ["CS_B"])

    def answer(request):
        b.send_method_response(MethodResponse.create_from_method_request(request, 200, {"echo": request.payload}))

    b.on_method_request_received = answer
    b.connect()
    deadline = time.monotonic() + 30
    while True:
        # The module's method subscription reaches the operator's hub a moment after it connects.
        result = edgehub("method", "invoke", operator_target(), "echo", json.dumps({"n": 7}))
        if result["status"] != 404 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert result == {"status": 200, "payload": {"echo": {"n": 7}}}, result
    b.shutdown()


def wrong_key():
    """A connection string with a wrong key is refused: the SDK raises CredentialError."""
    parts = fields(os.environ["CS_A"])
    parts["SharedAccessKey"] = base64.b64encode(b"0" * 32).decode()
    bad = client(";".join(f"{k}={v}" for k, v in parts.items()))
    try:
        bad.connect()
    except CredentialError:
        return
    finally:
        bad.shutdown()
    raise AssertionError("connected with a wrong key")


def expired_token():
    """A correctly signed token that expired more than the 5-minute skew ago gets CONNACK 5.
    The SDK refuses to send an expired token, so this uses its MQTT transport (paho) directly."""
    import paho.mqtt.client as mqtt

    parts = fields(os.environ["CS_A"])
    device, module, hub = parts["DeviceId"], parts["ModuleId"], parts["HostName"]
    resource = urllib.parse.quote(f"{hub}/devices/{device}/modules/{module}", safe="")
    expiry = str(int(time.time()) - 3600)
    key = base64.b64decode(parts["SharedAccessKey"])
    signature = base64.b64encode(hmac.new(key, f"{resource}\n{expiry}".encode(), hashlib.sha256).digest())
    token = f"SharedAccessSignature sr={resource}&sig={urllib.parse.quote(signature, safe='')}&se={expiry}"

    result = queue.Queue()
    paho = mqtt.Client(client_id=f"{device}/{module}", clean_session=False, protocol=mqtt.MQTTv311)
    context = ssl.SSLContext(ssl.PROTOCOL_TLSv1_2)
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    context.load_verify_locations(cadata=CA)
    paho.tls_set_context(context)
    paho.username_pw_set(f"{hub}/{device}/{module}/?api-version=2021-04-12", token)
    paho.on_connect = lambda _client, _userdata, _flags, rc: result.put(rc)
    paho.connect(parts["GatewayHostName"], 8883)
    paho.loop_start()
    try:
        rc = result.get(timeout=20)
    finally:
        paho.loop_stop()
    assert rc == 5, f"CONNACK {rc}, expected 5"


if __name__ == "__main__":
    scenario = globals()[sys.argv[1]]
    scenario()
    print(f"{sys.argv[1]}: ok")
