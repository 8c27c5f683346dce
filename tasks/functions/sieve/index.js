// tinyFaaS's sieve of Eratosthenes in its (req, res) shape: the primes up to N, where N is
// the body (a number, or {"n": N}), 10000 when there is none.
module.exports = (req, res) => {
  const body = req.body
  let max = 10000
  if (typeof body === 'number') max = body
  else if (body && typeof body.n === 'number') max = body.n
  if (!Number.isInteger(max) || max < 2 || max > 10000000) {
    return res.status(400).send({ error: 'N must be an integer from 2 to 10000000' })
  }
  const sieve = new Uint8Array(max + 1)
  const primes = []
  for (let i = 2; i <= max; ++i) {
    if (!sieve[i]) {
      primes.push(i)
      for (let j = i * 2; j <= max; j += i) sieve[j] = 1
    }
  }
  res.send({ n: max, count: primes.length, last: primes[primes.length - 1] })
}
