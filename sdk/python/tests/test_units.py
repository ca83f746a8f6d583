"""Unit tests: backoff bounds, Retry-After and 1012 delays, de-duplication,
pins, configuration from the environment."""

from __future__ import annotations

import hashlib
import ssl
import unittest

import fakenode  # noqa: F401 - puts the package on sys.path

from switchboard_device import Backoff, Client, Config, DialError, PinMismatch, Replaced, fingerprint
from switchboard_device._backoff import ceiling, parse_duration, rebalance_delay, retry_after
from switchboard_device._dedup import Dedup
from switchboard_device._tls import check_pin, client_context, parse_pin
from switchboard_device.client import _Outcome


class BackoffTest(unittest.TestCase):
    def test_ceiling_doubles_up_to_max(self) -> None:
        self.assertEqual([ceiling(0.5, 30, a) for a in range(8)], [0.5, 1, 2, 4, 8, 16, 30, 30])
        self.assertEqual(ceiling(0.5, 30, 1000), 30)

    def test_waits_are_uniform_under_the_ceiling(self) -> None:
        b = Backoff(0.1, 2.0)
        for attempt in range(12):
            cap = ceiling(0.1, 2.0, attempt)
            waits = []
            for _ in range(200):
                b.attempts = attempt
                waits.append(b.next())
            self.assertTrue(all(0 <= w <= cap for w in waits), f"attempt {attempt}: a wait over {cap}")
            # Full jitter: the waits spread over the whole range, not near its top.
            self.assertLess(min(waits), cap * 0.2)
            self.assertGreater(max(waits), cap * 0.8)

    def test_counts_and_resets(self) -> None:
        calls: list[tuple[float, float]] = []

        def highest(lo: float, hi: float) -> float:
            calls.append((lo, hi))
            return hi

        b = Backoff(0.5, 4.0, rand=highest)
        self.assertEqual([b.next() for _ in range(5)], [0.5, 1.0, 2.0, 4.0, 4.0])
        self.assertEqual(b.attempts, 5)
        b.reset()
        self.assertEqual(b.next(), 0.5)
        self.assertTrue(all(lo == 0 for lo, _ in calls))

    def test_refuses_bad_bounds(self) -> None:
        for lo, hi in [(0, 1), (-1, 1), (2, 1)]:
            with self.assertRaises(ValueError):
                Backoff(lo, hi)


class DelayTest(unittest.TestCase):
    def test_rebalance_delay(self) -> None:
        cases = {"30s": 30, "reconnect in 15s": 15, "1m30s": 90, "500ms": 0.5, "1.5s": 1.5,
                 "30h": 600, "": 1, "soon": 1, "0s": 1, "-5s": 1}
        for reason, want in cases.items():
            self.assertAlmostEqual(rebalance_delay(reason), want, msg=reason)

    def test_parse_duration(self) -> None:
        self.assertEqual(parse_duration("2h"), 7200)
        self.assertIsNone(parse_duration("2 h"))
        self.assertIsNone(parse_duration("s"))

    def test_retry_after(self) -> None:
        self.assertEqual(retry_after("5"), 5)
        self.assertEqual(retry_after(" 7 "), 7)
        self.assertEqual(retry_after("86400"), 300)
        self.assertEqual(retry_after(None), 0)
        self.assertEqual(retry_after("later"), 0)
        now = 1_700_000_000.0  # 2023-11-14T22:13:20Z
        self.assertEqual(retry_after("Tue, 14 Nov 2023 22:13:30 GMT", now=lambda: now), 10)
        self.assertEqual(retry_after("Tue, 14 Nov 2023 22:13:00 GMT", now=lambda: now), 0)


class DedupTest(unittest.TestCase):
    def test_redelivery(self) -> None:
        d = Dedup(4)
        self.assertEqual(d.begin("a"), (None, True))
        self.assertEqual(d.begin("a"), (None, False), "still running: not run again")
        d.finish("a", "reply-a")
        self.assertEqual(d.begin("a"), ("reply-a", False), "finished: answered with the same reply")

    def test_remembers_only_the_newest(self) -> None:
        d = Dedup(3)
        for id in "abcd":
            d.begin(id)
            d.finish(id, "r" + id)
        self.assertEqual(len(d), 3)
        self.assertEqual(d.begin("a"), (None, True), "the oldest was forgotten")
        self.assertEqual(d.begin("d"), ("rd", False))

    def test_forget(self) -> None:
        d = Dedup(2)
        d.begin("a")
        d.forget("a")
        self.assertEqual(d.begin("a"), (None, True))
        d.finish("gone", "x")  # not remembered: nothing to store
        self.assertEqual(d.begin("gone"), (None, True))


class PinTest(unittest.TestCase):
    der = b"not really a certificate, but bytes to hash"
    hexed = hashlib.sha256(der).hexdigest()

    def test_parse_forms(self) -> None:
        want = bytes.fromhex(self.hexed)
        colons = ":".join(self.hexed[i : i + 2] for i in range(0, 64, 2))
        for form in (self.hexed, self.hexed.upper(), colons, colons.upper(), f"  {colons}\n"):
            self.assertEqual(parse_pin(form), want, form)
        for bad in ("", "AB:CD", self.hexed[:-2], self.hexed + "00", "zz" * 32):
            with self.assertRaises(ValueError, msg=bad):
                parse_pin(bad)

    def test_fingerprint(self) -> None:
        fp = fingerprint(self.der)
        self.assertRegex(fp, r"^([0-9A-F]{2}:){31}[0-9A-F]{2}$")
        self.assertEqual(parse_pin(fp), bytes.fromhex(self.hexed))

    def test_check(self) -> None:
        check_pin(self.der, parse_pin(self.hexed))
        with self.assertRaises(PinMismatch):
            check_pin(self.der + b"x", parse_pin(self.hexed))
        with self.assertRaises(PinMismatch):
            check_pin(None, parse_pin(self.hexed))
        self.assertTrue(issubclass(PinMismatch, ssl.SSLError), "asyncio fails the handshake on an SSLError")

    def test_contexts(self) -> None:
        pinned = client_context(None, None, self.hexed)
        self.assertEqual(pinned.verify_mode, ssl.CERT_NONE, "a pin alone is the whole check")
        self.assertIsNot(pinned.sslobject_class, ssl.SSLObject)
        plain = client_context(None, None, None)
        self.assertEqual(plain.verify_mode, ssl.CERT_REQUIRED)
        self.assertIs(plain.sslobject_class, ssl.SSLObject)
        with self.assertRaises(ValueError):
            client_context(None, None, "AB:CD")


class ConfigTest(unittest.TestCase):
    def test_from_env(self) -> None:
        env = {
            "SWITCHBOARD_URL": "wss://127.0.0.1:1/v1/connect",
            "SWITCHBOARD_DEVICE_ID": "dev-1",
            "SWITCHBOARD_DEVICE_SECRET": "s3cret",
            "SWITCHBOARD_CA": "/tmp/ca.pem",
            "SWITCHBOARD_MIN_BACKOFF_MS": "100",
            "SWITCHBOARD_MAX_BACKOFF_MS": "2000",
            "SWITCHBOARD_REPLACED_DELAY_MS": "3000",
            "SWITCHBOARD_READ_TIMEOUT_MS": "1500",
        }
        c = Config.from_env(env)
        self.assertEqual((c.url, c.id, c.secret, c.ca_file, c.pin), (env["SWITCHBOARD_URL"], "dev-1", "s3cret", "/tmp/ca.pem", None))
        self.assertEqual((c.min_backoff, c.max_backoff, c.replaced_delay, c.read_timeout), (0.1, 2.0, 3.0, 1.5))
        d = Config.from_env({k: v for k, v in env.items() if not k.endswith("_MS")})
        self.assertEqual((d.min_backoff, d.max_backoff, d.replaced_delay, d.read_timeout), (0.5, 30.0, 60.0, 60.0))
        with self.assertRaises(KeyError):
            Config.from_env({"SWITCHBOARD_URL": "wss://x/v1/connect"})
        with self.assertRaises(ValueError):
            Config.from_env({**env, "SWITCHBOARD_MIN_BACKOFF_MS": "soon"})



class DelayChoiceTest(unittest.TestCase):
    """The wait run() picks after each kind of session end."""

    def setUp(self) -> None:
        self.client = Client(Config(url="wss://127.0.0.1:1/v1/connect", id="d", secret="s", min_backoff=0.5, max_backoff=8, replaced_delay=4))

    def highest(self) -> Backoff:
        return Backoff(0.5, 8, rand=lambda lo, hi: hi)

    def test_4029_grows_the_attempt_count(self) -> None:
        retry = self.highest()
        self.assertEqual(self.client._next_delay(_Outcome(code=4029), retry), 1.0, "a cap of 2·min after a fresh start")
        self.assertEqual(self.client._next_delay(_Outcome(code=4029), retry), 2.0)
        lowest = Backoff(0.5, 8, rand=lambda lo, hi: lo)
        self.assertEqual(self.client._next_delay(_Outcome(code=4029), lowest), 0.0, "jittered from 0")

    def test_plain_codes_back_off(self) -> None:
        retry = self.highest()
        waits = [self.client._next_delay(_Outcome(code=code), retry) for code in (1001, 1006, 1008, 1011)]
        self.assertEqual(waits, [0.5, 1.0, 2.0, 4.0])

    def test_1012_and_4008(self) -> None:
        retry = self.highest()
        self.assertEqual(self.client._next_delay(_Outcome(code=1012, reason="rebalance: reconnect in 1m30s"), retry), 90)
        self.assertEqual(retry.attempts, 0, "a rebalance is not a failure")
        for _ in range(50):
            wait = self.client._next_delay(_Outcome(code=4008, err=Replaced()), retry)
            self.assertTrue(2 <= wait <= 4, wait)

    def test_retry_after(self) -> None:
        retry = self.highest()
        refused = _Outcome(err=DialError("u", OSError("503"), 503, retry_after=3))
        self.assertEqual(self.client._next_delay(refused, retry), 3, "not before Retry-After")
        for _ in range(3):
            self.client._next_delay(refused, retry)
        self.assertEqual(self.client._next_delay(refused, retry), 8, "later still while refusals last")


if __name__ == "__main__":
    unittest.main()
