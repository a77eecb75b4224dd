#!/usr/bin/env python3
# A rough figure for the XDP fast path on veth (README "The XDP fast path"): turnd
# (one worker) in one network namespace, a ChannelData generator (100-byte payloads,
# one Python socket: it, not turnd, sets the rate) and a UDP sink in another. Prints
# what was relayed and the CPU it cost on the relay side: turnd's own CPU time and the
# machine's softirq time (/proc/stat, all CPUs: on veth the XDP program runs there,
# and so do the generator's and the sink's packets, in both modes, and anything else
# the machine is doing). Root; namespaces xm-s and xm-o are made and removed.
#   cargo build --release --features xdp
#   python3 scripts/xdp-veth-measure.py target/release/turnd on|off SECONDS \
#       target/release/build/turnd-*/out/turnd_xdp.o
# The last argument is the program a pass-through copy of which goes on the far end of
# the veth (a veth drops what XDP transmits to it otherwise).
import os, socket, struct, subprocess, sys, time, hmac, hashlib, threading, signal
BIN, MODE, SECS = sys.argv[1], sys.argv[2], float(sys.argv[3])
S, O = 'xm-s', 'xm-o'
def sh(*a): subprocess.run(a, check=True)
for n in (S, O): subprocess.run(['ip', 'netns', 'del', n], stderr=subprocess.DEVNULL)
sh('ip', 'netns', 'add', S); sh('ip', 'netns', 'add', O)
sh('ip', '-n', S, 'link', 'add', 'c0', 'type', 'veth', 'peer', 'name', 's0', 'netns', O)
sh('ip', '-n', S, 'addr', 'add', '10.88.1.1/24', 'dev', 'c0')
sh('ip', '-n', O, 'addr', 'add', '10.88.1.2/24', 'dev', 's0'); sh('ip', '-n', O, 'addr', 'add', '10.88.1.3/24', 'dev', 's0')
for n, d in ((S, 'c0'), (O, 's0')): sh('ip', '-n', n, 'link', 'set', d, 'up'); sh('ip', '-n', n, 'link', 'set', 'lo', 'up')
sh('ip', 'netns', 'exec', S, 'sysctl', '-qw', 'net.ipv4.conf.c0.forwarding=1')
sh('ip', '-n', O, 'link', 'set', 'dev', 's0', 'xdpdrv', 'obj', sys.argv[4], 'sec', 'xdp')
open('/tmp/xm.toml', 'w').write(f'''realm = "x"
workers = 1
drain-time = "0s"
[[listen]]
transport = "udp"
address = "10.88.1.1:3478"
[admin]
enabled = false
[relay]
allowed-peers = ["10.88.1.0/24"]
xdp = "{MODE}"
xdp-interfaces = ["c0"]
[[auth.user]]
name = "u"
password = "p"
[log]
level = "warn"
''')
turnd = subprocess.Popen(['ip', 'netns', 'exec', S, BIN, 'serve', '-c', '/tmp/xm.toml'])
time.sleep(1.5)
def enter(ns):
    import ctypes; fd = os.open(f'/var/run/netns/{ns}', os.O_RDONLY); assert ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) == 0; os.close(fd)
enter(O)
def attr(t, v): return struct.pack('!HH', t, len(v)) + v + b'\0' * ((4 - len(v) % 4) % 4)
def msg(typ, attrs, key=None):
    tid = os.urandom(12); body = b''.join(attrs)
    if key:
        h = struct.pack('!HHI', typ, len(body) + 24, 0x2112A442) + tid + body
        body += attr(8, hmac.new(key, h, hashlib.sha1).digest())
    return struct.pack('!HHI', typ, len(body), 0x2112A442) + tid + body
def parse(b):
    typ, ln = struct.unpack('!HH', b[:4]); out = {}; i = 20
    while i < 20 + ln:
        t, l = struct.unpack('!HH', b[i:i+4]); out[t] = b[i+4:i+4+l]; i += 4 + l + ((4 - l % 4) % 4)
    return typ, out
SRV = ('10.88.1.1', 3478)
sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); sink.bind(('10.88.1.3', 7000)); sink.settimeout(0.5)
sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c.bind(('10.88.1.2', 0)); c.settimeout(2)
def rt(m): c.sendto(m, SRV); return parse(c.recv(2000))
_, a = rt(msg(3, [attr(0x19, b'\x11\0\0\0')])); key = hashlib.md5(b'u:x:p').digest()
auth = [attr(6, b'u'), attr(0x14, b'x'), attr(0x15, a[0x15])]
assert rt(msg(3, [attr(0x19, b'\x11\0\0\0')] + auth, key))[0] == 0x103
xa = struct.pack('!BBH', 0, 1, 7000 ^ 0x2112) + bytes(x ^ y for x, y in zip(socket.inet_aton('10.88.1.3'), struct.pack('!I', 0x2112A442)))
assert rt(msg(9, [attr(0xc, b'\x40\0\0\0'), attr(0x12, xa)] + auth, key))[0] == 0x109
time.sleep(1.2)
got = [0]
stop = [False]
def drain():
    while not stop[0]:
        try: sink.recv(2048); got[0] += 1
        except socket.timeout: pass
t = threading.Thread(target=drain); t.start()
def stat():
    f = open('/proc/stat').readline().split()[1:]
    v = list(map(int, f)); return v
def proc_cpu(pid):
    f = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split(); return int(f[11]) + int(f[12])
tpid = int(subprocess.run(['ip', 'netns', 'pids', S], capture_output=True, text=True).stdout.split()[-1])
frame = struct.pack('!HH', 0x4000, 100) + bytes(100)
s0, p0, g0, t0 = stat(), proc_cpu(tpid), got[0], time.time()
sent = 0
while time.time() - t0 < SECS:
    for _ in range(1000):
        c.sendto(frame, SRV)
    sent += 1000
s1, p1, t1 = stat(), proc_cpu(tpid), time.time()
time.sleep(0.6); stop[0] = True; t.join()
hz = os.sysconf('SC_CLK_TCK')
soft = (s1[6] - s0[6]) / hz
relayed = got[0] - g0
print(f'mode={MODE} sent={sent} relayed={relayed} secs={t1-t0:.2f} pps={relayed/(t1-t0):.0f} '
      f'turnd_cpu_s={(p1-p0)/hz:.2f} softirq_s={soft:.2f} '
      f'turnd+softirq_us_per_pkt={((p1-p0)/hz + soft) / max(relayed,1) * 1e6:.2f}')
turnd.send_signal(signal.SIGINT); turnd.wait()
for n in (S, O): subprocess.run(['ip', 'netns', 'del', n])
