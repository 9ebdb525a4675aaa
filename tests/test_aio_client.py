"""The asyncio client `tscale.aio.Client` against live nodes (asyncio.run inside sync tests)."""
from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter

import pytest

import tscale
from conftest import DEADLINE, Inbox, free_port_block, name_for, uniq, wait_until

aio = pytest.importorskip("tscale.aio")


def run(coro, timeout: float = 90.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def connect(node, **kw):
    kw.setdefault("name", "aio-test")
    for k, v in node.creds.items():
        kw.setdefault(k, v)
    return await aio.Client.connect(node.addr, **kw)


def test_publish_subscribe_wildcards_headers_reply(node2):
    async def main():
        P = uniq("aio")
        names = [name_for(k, 2, P + ".x") for k in range(2)]
        async with await connect(node2, name="aio-sub") as sub_c, await connect(node2, name="aio-pub") as pub_c:
            star = await sub_c.subscribe(P + ".x.*")
            tail = await sub_c.subscribe(P + ".>")
            exact = await sub_c.subscribe(names[1])
            none = await sub_c.subscribe(P + ".y.*")
            for n in names:
                await pub_c.publish(n, n.encode(), headers={"k": "v"}, reply="reply.to")
            await pub_c.publish(P + ".x.a.b", b"deep")          # only for '>'
            got_star = [await star.next_msg(timeout=DEADLINE) for _ in names]
            got_tail = [await tail.next_msg(timeout=DEADLINE) for _ in range(3)]
            got_exact = await exact.next_msg(timeout=DEADLINE)
            assert sorted(m.name for m in got_star) == sorted(names)
            assert sorted(m.name for m in got_tail) == sorted(names + [P + ".x.a.b"])
            assert got_exact.name == names[1] and got_exact.data == names[1].encode()
            for m in got_star:
                assert m.headers == {"k": "v"} and m.reply == "reply.to" and m.data == m.name.encode()
            with pytest.raises(tscale.Timeout):
                await none.next_msg(timeout=0.3)
            with pytest.raises(tscale.Timeout):
                await star.next_msg(timeout=0.3)
    run(main())


def test_callbacks_plain_and_coroutine(node2):
    async def main():
        P = uniq("aiocb")
        plain, coro = [], []
        done = asyncio.Event()

        async def acb(msg):
            await asyncio.sleep(0)        # a real coroutine callback that yields to the loop
            coro.append(msg.data)
            if len(coro) == 10:
                done.set()

        async with await connect(node2) as c:
            await c.subscribe(P + ".>", cb=lambda m: plain.append(m.data))
            await c.subscribe(P + ".>", cb=acb)
            async with await connect(node2) as pub:
                for i in range(10):
                    await pub.publish(name_for(i % 2, 2, P, start=i * 10), b"%d" % i)
                await asyncio.wait_for(done.wait(), DEADLINE)
            deadline = asyncio.get_running_loop().time() + DEADLINE
            while len(plain) < 10 and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
            assert sorted(plain) == sorted(coro) == sorted(b"%d" % i for i in range(10))
    run(main())


def test_async_iteration_and_unsubscribe(node2):
    async def main():
        P = uniq("aioit")
        name = name_for(1, 2, P)
        async with await connect(node2) as c, await connect(node2) as pub:
            sub = await c.subscribe(name)
            keep = await c.subscribe(P + ".*")
            for i in range(5):
                await pub.publish(name, b"%d" % i)
            got = []
            async for msg in sub:
                got.append(int(msg.data))
                if len(got) == 5:
                    break
            assert got == [0, 1, 2, 3, 4], "one publisher, one name: in order"
            for _ in range(5):
                await keep.next_msg(timeout=DEADLINE)
            await sub.unsubscribe()
            await pub.publish(name, b"after")
            assert (await keep.next_msg(timeout=DEADLINE)).data == b"after"
            assert sub.pending() == 0
    run(main())


def test_request_reply_and_no_responders(node2):
    async def main():
        P = uniq("aiorr")
        svc = name_for(1, 2, P)
        async with await connect(node2, name="aio-resp") as resp, await connect(node2, name="aio-req") as req:
            async def handler(msg):
                await resp.publish(msg.reply, b"re:" + msg.data, headers={"echo": (msg.headers or {}).get("x", "")})
            await resp.subscribe(svc, cb=handler)
            for i in range(5):
                m = await req.request(svc, b"%d" % i, timeout=DEADLINE, headers={"x": str(i)})
                assert m.data == b"re:%d" % i and m.headers == {"echo": str(i)}
            for owner in (0, 1):
                t0 = time.monotonic()
                with pytest.raises(tscale.NoResponders):
                    await req.request(name_for(owner, 2, uniq("nobody")), b"?", timeout=10)
                assert time.monotonic() - t0 < 5, "no responders is immediate, not a timeout"
            silent = name_for(0, 2, uniq("silent"))
            await resp.subscribe(silent, cb=lambda m: None)
            with pytest.raises(tscale.Timeout):
                await req.request(silent, b"?", timeout=0.5)
    run(main())


def test_request_to_sync_responder(node2, clients):
    svc = name_for(0, 2, uniq("aiosync"))
    clients(node2, name="sync-resp").subscribe(svc, cb=lambda m: m.respond(m.data.upper()))

    async def main():
        async with await connect(node2) as c:
            return [(await c.request(svc, b"abc%d" % i, timeout=DEADLINE)).data for i in range(3)]
    assert run(main()) == [b"ABC0", b"ABC1", b"ABC2"]


def test_queue_group_with_sync_members(node2, clients):
    P = uniq("aioq")
    names = [name_for(k, 2, P) for k in range(2)]
    sync_inbox = Inbox()
    clients(node2, name="sync-member").subscribe(P + ".*", queue="g", cb=sync_inbox)
    n = 200

    async def main():
        async with await connect(node2) as m1, await connect(node2) as pub:
            a_ids = []
            await m1.subscribe(P + ".*", queue="g", cb=lambda m: a_ids.append(int(m.data)))
            plain = await m1.subscribe(P + ".*")
            for i in range(n):
                await pub.publish(names[i % 2], b"%d" % i)
            plain_ids = [int((await plain.next_msg(timeout=DEADLINE)).data) for _ in range(n)]
            assert sorted(plain_ids) == list(range(n))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + DEADLINE
            while len(a_ids) + len(sync_inbox) < n and loop.time() < deadline:
                await asyncio.sleep(0.01)
            await pub.flush()
            return a_ids
    a_ids = run(main())
    b_ids = [int(m.data) for m in sync_inbox.snapshot()]
    both = a_ids + b_ids
    assert not [i for i, c in Counter(both).items() if c > 1], "an event reached two members"
    assert sorted(both) == list(range(n))
    assert a_ids and b_ids, "both members got a share"


def test_no_slow_joiner(node2, clients, raws):
    py_pub = clients(node2, name="aio-sj-pub")
    raw_pub = raws(node2.port, name="aio-sj-raw-pub")

    async def main():
        async with await connect(node2, name="aio-sj") as c:
            for i in range(30):
                P = uniq("aiosj")
                name = name_for(i % 2, 2, P)
                sub = await c.subscribe(name if (i // 2) % 2 else P + ".>")
                if (i // 4) % 2:
                    py_pub.publish(name, b"%d" % i)
                else:
                    raw_pub.pub(name, b"%d" % i)
                m = await sub.next_msg(timeout=10)
                assert (m.name, m.data) == (name, b"%d" % i), f"round {i}"
                await sub.unsubscribe()
    run(main())


def test_flush_drain_close_and_limits(node2, clients):
    P = uniq("aiofl")
    name = name_for(1, 2, P)
    got = Inbox()
    clients(node2, name="fl-sub").subscribe(name, cb=got)

    async def main():
        c = await connect(node2, name="aio-fl")
        assert c.max_payload == 1024 * 1024
        assert c.info["shard"]["count"] == 2
        with pytest.raises(tscale.TscaleError):
            await c.publish(name, b"x" * (c.max_payload + 1))
        with pytest.raises(tscale.TscaleError):
            await c.publish("bad name", b"x")
        for i in range(100):
            await c.publish(name, b"%d" % i)
        await c.flush()
        await c.drain()
        with pytest.raises(tscale.TscaleError):
            await c.publish(name, b"closed")
        await c.close()           # closing twice is harmless
    run(main())
    wait_until(lambda: len(got) == 100, what="every event published before drain() delivered")
    assert [int(m.data) for m in got.snapshot()] == list(range(100))


def test_status(node2):
    async def main():
        async with await connect(node2) as c:
            return await c.status()
    st = run(main())
    assert st["node"]["workers"] == 2 and len(st["workers"]) == 2


def test_connect_errors():
    async def main():
        with pytest.raises(tscale.ConnectError):
            await aio.Client.connect(f"127.0.0.1:{free_port_block(1)}", connect_timeout=1.0)
    run(main())


def test_keeps_receiving_after_worker_restart(make_node):
    node = make_node(2)
    P = uniq("aiokill")
    name = name_for(1, 2, P)

    async def main():
        async with await connect(node, name="aio-survivor") as c, await connect(node, name="aio-kpub") as pub:
            sub = await c.subscribe(name)
            await pub.publish(name, b"before")
            assert (await sub.next_msg(timeout=DEADLINE)).data == b"before"
            old = await asyncio.get_running_loop().run_in_executor(None, node.kill_worker, 1, signal.SIGKILL)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            i = 0
            while loop.time() < deadline:
                await pub.publish(name, b"after-%d" % i)
                i += 1
                try:
                    m = await sub.next_msg(timeout=0.2)
                except tscale.Timeout:
                    continue
                if m.data.startswith(b"after-"):
                    return old
            raise AssertionError("the aio subscriber got nothing after the worker restart")
    old = run(main())
    wait_until(lambda: node.worker_pids()[1] != old, what="worker 1 restarted")


def test_wrong_token_refused(make_node):
    node = make_node(1, token="secret")

    async def main():
        with pytest.raises(tscale.ConnectError):
            await aio.Client.connect(node.addr, token="wrong", connect_timeout=5)
        async with await aio.Client.connect(node.addr, token="secret") as c:
            s = await c.subscribe("tok.>")
            await c.publish("tok.a", b"ok")
            assert (await s.next_msg(timeout=DEADLINE)).data == b"ok"
    run(main())


def test_subscribe_without_wait_then_flush(node2):
    async def main():
        P = uniq("aionw")
        names = [name_for(k, 2, P) for k in range(2)]
        async with await connect(node2, name="aio-nw-sub") as sub_c, await connect(node2, name="aio-nw-pub") as pub_c:
            subs = [await sub_c.subscribe(n, wait=False) for n in names]
            await sub_c.flush(timeout=DEADLINE)
            for n in names:
                await pub_c.publish(n, n.encode())
            for s, n in zip(subs, names):
                assert (await s.next_msg(timeout=DEADLINE)).data == n.encode()
    run(main())
