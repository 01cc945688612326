"""A module built with the Azure IoT device SDK: finds the hub through the environment the
agent gives it (IOTEDGE_* and the workload socket) and sends a message to output out1 every
half second."""
import json
import time

from azure.iot.device import IoTHubModuleClient, Message

client = IoTHubModuleClient.create_from_edge_environment()
client.connect()
for n in range(100000):
    client.send_message_to_output(Message(json.dumps({"n": n}), content_type="application/json", content_encoding="utf-8"), "out1")
    time.sleep(0.5)
