"""Local stand-ins for the platforms we cannot reach from a test machine (Aliyun SMS, WeCom, an SMTP
server), each speaking its platform's real protocol (../shared/PLATFORMS.md) so that our real
clients talk to them unchanged. The tests, the benches and `orchestrator rehearse
--fake-platforms` use them; nothing in a live event does."""
