#!/usr/bin/env python3
"""Extracts fuzz seeds from a loopback capture of real TURN traffic.

    tcpdump -i lo -w turn.pcap 'port 34780 or portrange 41000-41099 or port 3480'
    (turnd on 127.0.0.1:34780 udp+tcp; turnutils_peer on 3480; turnutils_uclient
     with and without -c (channels / Send indications), -t (TCP); turnutils_stunclient)
    python3 seeds/pcap_to_seeds.py turn.pcap seeds

UDP payloads that start like STUN go to stun_decode/, ChannelData to channel_data/;
each TCP connection's client-to-server bytes become one framer/ stream (with the
chunking byte the framer target reads first). Duplicates are skipped; at most 40
seeds per folder. Only the standard library is used.
"""
import hashlib
import os
import struct
import sys
from collections import defaultdict

def packets(path):
    with open(path, "rb") as f:
        magic, _, _, _, _, _, linktype = struct.unpack("<IHHiIII", f.read(24))
        assert magic == 0xA1B2C3D4, "classic little-endian pcap expected"
        while True:
            head = f.read(16)
            if len(head) < 16:
                return
            _, _, incl, _ = struct.unpack("<IIII", head)
            frame = f.read(incl)
            if linktype == 1:  # Ethernet
                if frame[12:14] != b"\x08\x00":
                    continue
                frame = frame[14:]
            elif linktype == 113:  # Linux cooked
                frame = frame[16:]
            yield frame

def main(pcap, out, server_port=34780):
    seen = set()
    counts = defaultdict(int)
    streams = defaultdict(bytearray)

    def save(folder, data):
        digest = hashlib.sha1(data).hexdigest()[:16]
        if digest in seen or counts[folder] >= 40:
            return
        seen.add(digest)
        counts[folder] += 1
        os.makedirs(os.path.join(out, folder), exist_ok=True)
        with open(os.path.join(out, folder, "capture-" + digest), "wb") as f:
            f.write(data)

    for ip in packets(pcap):
        if len(ip) < 20 or ip[0] >> 4 != 4:
            continue
        ihl = (ip[0] & 15) * 4
        proto = ip[9]
        body = ip[ihl:]
        if proto == 17 and len(body) >= 8:
            payload = body[8:]
            if not payload:
                continue
            if payload[0] < 0x40:
                save("stun_decode", payload)
            elif payload[0] < 0x80:
                save("channel_data", payload)
        elif proto == 6 and len(body) >= 20:
            sport, dport = struct.unpack("!HH", body[:4])
            payload = body[(body[12] >> 4) * 4:]
            if payload and dport == server_port:
                streams[sport] += payload
    for data in streams.values():
        save("framer", bytes([5]) + bytes(data))
    print(dict(counts))

if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
