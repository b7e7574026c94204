#!/usr/bin/env bash
# Runs the tests where memory safety and threads matter under the sanitizers, each in a
# build of its own (CI runs it after scripts/test.sh; it needs what that script installed):
#   AddressSanitizer: the TLS engine, rotation, mutual TLS with handshakes parked across
#     rotations, hostile certificate files, upstream verification (its C callbacks) and reloads (the gateway binary the reload
#     tests start is the instrumented one);
#   ThreadSanitizer: the certificate watcher and store, whose thread publishes snapshots
#     that the event loops read, and a generation's background jobs (BackgroundJobs), whose
#     ticks run on the task pool and the thread pool;
# A finding fails the run (ASan ends the test process at its first report; TSan's report
# makes the run exit non-zero).
set -euo pipefail
cd "$(dirname "$0")/.."
asan_tests='EdgeTLSTests|RotationTests|TrustChangeTests|ParkedHandshakeTests|HostileFilesTests|ReloadUnderLoadTests.testARejectedReload|ReloadUnderLoadTests.testTwentyReloads|DownstreamTLSTests.testMutualTLS|DownstreamTLSTests.testANewClientCABundle|DownstreamTLSTests.testClientAuthPerSNIName|UpstreamTLSFailoverTests|UpstreamHTTP2Tests|HTTP2UpstreamSessionTests|HTTP2DownstreamTests|HTTP2ServerEngineTests|HTTP2FramesTests|DownstreamTLSTests.testHTTP2|HTTP2AbuseTests|UpstreamTests.testUpstreamCertificatesAreVerified|ServedProofTests|ClientRevocationTests|OCSPStaplingTests|OCSPCheckTests'
tsan_tests='RotationTests|HostileFilesTests|BackgroundJobsTests'

echo "== AddressSanitizer"
swift build --build-tests --sanitize=address --build-path .build-asan
ASAN_OPTIONS=detect_leaks=0 timeout 1200 swift test --skip-build --sanitize=address --build-path .build-asan --filter "$asan_tests"

echo "== ThreadSanitizer"
swift build --build-tests --sanitize=thread --build-path .build-tsan
TSAN_OPTIONS=halt_on_error=1 timeout 900 swift test --skip-build --sanitize=thread --build-path .build-tsan --filter "$tsan_tests"
