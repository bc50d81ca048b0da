/**
 * Lists the domains behind a gateway, gets one, and shows the typed error of a
 * missing one; the test of the Node client runs it on a real mesh.
 *
 *   node dist/example.js --address 127.0.0.1:16514 --ca ca.crt --cert client.crt --key client.key NAME
 *   node dist/example.js --address 127.0.0.1:16515 --ca ca.crt --token-file token NAME
 */
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

import { asVirtmeshError, compute, dial, VirtmeshError } from "./index";

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      address: { type: "string", default: "127.0.0.1:16514" },
      ca: { type: "string" },
      cert: { type: "string" },
      key: { type: "string" },
      "token-file": { type: "string" },
      "server-name": { type: "string" },
    },
  });
  if (positionals.length !== 1 || !values.ca) {
    console.error("usage: example --ca FILE [--cert FILE --key FILE] [--token-file FILE] DOMAIN");
    process.exit(2);
  }
  const token = values["token-file"] ? readFileSync(values["token-file"], "utf8").trim() : undefined;
  const mesh = dial({ address: values.address!, ca: values.ca, cert: values.cert, key: values.key, token,
                      serverName: values["server-name"] });
  try {
    const { domains } = await mesh.compute.call.listDomains(compute.ListDomainsRequest.fromPartial({}));
    for (const domain of domains) {
      console.log(`domain ${domain.name} ${compute.domainStateToJSON(domain.state)}`);
    }
    const { domain } = await mesh.compute.call.getDomain(compute.GetDomainRequest.fromPartial({ name: positionals[0] }));
    console.log(`get ${domain?.name} ${domain?.uuid}`);
    try {
      await mesh.compute.call.getDomain(compute.GetDomainRequest.fromPartial({ name: `${positionals[0]}-missing` }));
      console.error("a missing domain was found");
      process.exitCode = 1;
    } catch (error) {
      const typed = asVirtmeshError(error);
      if (!(typed instanceof VirtmeshError)) throw error;
      console.log(`error ${JSON.stringify({ code: typed.codeName, reason: typed.reason, domain: typed.domain,
                                             metadata: typed.metadata })}`);
    }
  } finally {
    mesh.close();
  }
}

main().catch((error) => {
  console.error(`example: ${asVirtmeshError(error)}`);
  process.exit(1);
});
