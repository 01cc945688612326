"""A module built with the Azure IoT device SDK: writes each message it receives, one line
each (`<input> <body>`), to the file named by its first argument."""
import sys
import time

from azure.iot.device import IoTHubModuleClient

out = sys.argv[1]
client = IoTHubModuleClient.create_from_edge_environment()


def received(message):
    with open(out, "a") as f:
        f.write(f"{message.input_name} {message.data.decode()}\n")


client.on_message_received = received
client.connect()
while True:
    time.sleep(1)
