-- wrk script of `fanout-bench proxy-overhead`: every request is the JSON-RPC `tools/call` an MCP
-- SDK client sends to a stateless server, with the SDK clients' headers; in the session
-- `MCP_SESSION_ID` names, when set (the `mcp-fanout-session` system).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["MCP-Protocol-Version"] = "2025-06-18"
wrk.body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","arguments":{"a":1,"b":2}}}'
local session = os.getenv("MCP_SESSION_ID")
if session ~= nil and session ~= "" then
    wrk.headers["Mcp-Session-Id"] = session
end
