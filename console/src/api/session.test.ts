import { describe, expect, it } from "vitest";
import { parseToken } from "./session";

const encode = (o: object) => btoa(JSON.stringify(o)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");

describe("a pasted token", () => {
  it("gives its subject, tenant and roles (Litestar keeps them under extras)", () => {
    const token = `${encode({ alg: "HS256" })}.${encode({ sub: "dana", exp: 4102444800, extras: { tenant: "demo", roles: ["support_agent"] } })}.sig`;
    expect(parseToken(token)).toMatchObject({ subject: "dana", tenant: "demo", roles: ["support_agent"] });
  });

  it("is refused with a reason when it is not a token or has expired", () => {
    expect(parseToken("nonsense")).toBe("a token has three parts separated by dots");
    const expired = `${encode({})}.${encode({ sub: "x", exp: 1, extras: { tenant: "demo", roles: [] } })}.sig`;
    expect(parseToken(expired)).toBe("the token has expired");
  });
});
