from harness import StaticCluster, http


def test_put_get_roundtrip(cluster3: StaticCluster) -> None:
    r = http("PUT", cluster3.url(0) + "/v1/kv/hello", b"world")
    assert r.status == 200, r.body
    version = r.json()["version"]
    assert r.headers["etag"] == f'"{version}"'
    for i in range(3):
        g = http("GET", cluster3.url(i) + "/v1/kv/hello")
        assert g.status == 200 and g.body == b"world", (i, g.status, g.body)
